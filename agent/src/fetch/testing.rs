//! An in-process stand-in for the controller's side of release transfer.
use super::*;

/// How the stand-in misbehaves.
#[derive(Clone, Default)]
pub struct Script {
    /// Drop the session after sending this many chunks of the first request.
    pub cut_after: Option<usize>,
    /// Answer every request with this error.
    pub refuse: Option<String>,
    /// Append this many extra bytes to what it serves.
    pub extra: usize,
}

/// Serves `blob` in `chunk`-byte pieces, forever (abort the task when done), recording
/// the offsets it was asked for.
pub fn serve(
    fetcher: Fetcher,
    blob: Vec<u8>,
    chunk: usize,
    script: Script,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<u64>>>) {
    let offsets = Arc::new(Mutex::new(Vec::new()));
    let seen = offsets.clone();
    let task = tokio::spawn(async move {
        let mut blob = blob;
        blob.extend(std::iter::repeat_n(b'x', script.extra));
        let mut cut = script.cut_after;
        loop {
            let (tx, mut rx) = mpsc::channel(16);
            let session = fetcher.attach(tx);
            let mut reattach = false;
            while let Some(msg) = rx.recv().await {
                let Some(agent_message::Body::Fetch(req)) = msg.body else {
                    continue;
                };
                seen.lock().unwrap().push(req.offset);
                if let Some(reason) = &script.refuse {
                    fetcher
                        .deliver(ReleaseData {
                            request_id: req.request_id,
                            error: reason.clone(),
                            ..Default::default()
                        })
                        .await;
                    continue;
                }
                let mut off = req.offset as usize;
                let mut sent = 0;
                loop {
                    if cut == Some(sent) {
                        cut = None;
                        reattach = true;
                        break;
                    }
                    let end = (off + chunk).min(blob.len());
                    fetcher
                        .deliver(ReleaseData {
                            request_id: req.request_id.clone(),
                            offset: off as u64,
                            data: blob[off..end].to_vec(),
                            last: end == blob.len(),
                            error: String::new(),
                        })
                        .await;
                    sent += 1;
                    off = end;
                    if off == blob.len() {
                        break;
                    }
                }
                if reattach {
                    break;
                }
            }
            drop(session);
            if !reattach {
                return;
            }
        }
    });
    (task, offsets)
}
