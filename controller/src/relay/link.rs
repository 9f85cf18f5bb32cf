//! The relay's connections to the leader and how their calls end: each link carries up
//! to `PER_LINK` calls, and when its controller stops leading every call on it ends at
//! once, as a controller going away ends a session.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::watch;
use tonic::body::Body;
use tonic::transport::Channel;
use tonic::Status;

pub(super) struct Link {
    pub(super) addr: String,
    pub(super) channel: Channel,
    pub(super) calls: Arc<AtomicUsize>,
    pub(super) made: Instant,
    /// Set when this link's controller no longer leads: its calls end at once.
    /// The reconnect window (ms) its callers are given.
    pub(super) cut: watch::Sender<Option<u64>>,
}

/// One call's share of a link, given back when its response ends.
pub(super) struct CallSlot(pub(super) Arc<AtomicUsize>);

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) type CutFuture = std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>>;

/// Ends the calls of every link `keep` refuses, and drops those links, giving their
/// callers one reconnect window sized by how many they are together.
pub(super) fn cut_links(links: &mut Vec<Link>, keep: impl Fn(&Link) -> bool) {
    let calls: usize = links
        .iter()
        .filter(|l| !keep(l))
        .map(|l| l.calls.load(Ordering::Relaxed))
        .sum();
    let window = reconnect_window_ms(calls);
    links.retain(|l| {
        let kept = keep(l);
        if !kept {
            let _ = l.cut.send(Some(window));
        }
        kept
    });
}

/// A relayed response that ends when its leader is replaced: a leader that was paused
/// or cut off would otherwise hold agents' streams open until the link's keepalive gave
/// up on it. It ends as a controller going away does, `unavailable` with a reconnect
/// window, so every agent behind this relay does not come back in the same instant.
pub(super) struct UntilCut {
    pub(super) body: Body,
    pub(super) cut: Option<CutFuture>,
    pub(super) _slot: CallSlot,
}

/// Streams a relay moves to a new leader per second (each a handshake here and a
/// session start there).
const RECONNECTS_PER_SECOND: u64 = 1_000;

/// The window `calls` relayed calls are asked to reconnect within.
fn reconnect_window_ms(calls: usize) -> u64 {
    (calls as u64 * 1000 / RECONNECTS_PER_SECOND).clamp(1_000, 120_000)
}

/// The trailers that end a cut call.
fn cut_trailers(window_ms: u64) -> http::HeaderMap {
    let mut status =
        Status::unavailable("the controller this call was relayed to no longer leads: reconnect");
    if let Ok(v) = window_ms.to_string().parse() {
        status.metadata_mut().insert(fleet_proto::RETRY_AFTER_MS, v);
    }
    let mut trailers = http::HeaderMap::new();
    // Only fails on a message that is not a header value; this one is.
    let _ = status.add_header(&mut trailers);
    trailers
}

impl http_body::Body for UntilCut {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        let Some(cut) = self.cut.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(window_ms) = cut.as_mut().poll(cx) {
            self.cut = None;
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(cut_trailers(
                window_ms,
            )))));
        }
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.cut.is_none() || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Resolves with the reconnect window once `cut` is set; never when the link is merely
/// dropped (retired by age: its calls go on).
pub(super) fn when_cut(mut cut: watch::Receiver<Option<u64>>) -> CutFuture {
    Box::pin(async move {
        let got = cut
            .wait_for(Option::is_some)
            .await
            .map(|w| w.unwrap_or(1_000));
        match got {
            Ok(window) => window,
            Err(_) => std::future::pending().await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_cut_call_ends_as_unavailable_with_a_window_that_grows_with_the_calls() {
        assert_eq!(reconnect_window_ms(3), 1_000);
        assert_eq!(reconnect_window_ms(20_000), 20_000);
        assert_eq!(reconnect_window_ms(10_000_000), 120_000);
        let trailers = cut_trailers(20_000);
        let status = Status::from_header_map(&trailers).expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("no longer leads"), "{status:?}");
        assert_eq!(
            fleet_proto::reconnect::retry_spread(&status),
            Some(Duration::from_millis(20_000))
        );
    }
}
