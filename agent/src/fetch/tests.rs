use super::testing::{serve, Script};
use super::*;

fn quick() -> FetchSettings {
    FetchSettings {
        attempts: 3,
        session_wait: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(5),
        retry_delay: Duration::from_millis(10),
    }
}

fn blob(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn fetches_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("r.tar.gz");
    let fetcher = Fetcher::with_settings(quick());
    let data = blob(10_000);
    let (server, _) = serve(fetcher.clone(), data.clone(), 3_000, Script::default());
    fetcher.fetch("ab", 10_000, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    drop(fetcher);
    server.abort();
}

#[tokio::test]
async fn resumes_after_the_session_drops_mid_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("r.tar.gz");
    let fetcher = Fetcher::with_settings(quick());
    let data = blob(10_000);
    let script = Script {
        cut_after: Some(2),
        ..Script::default()
    };
    let (server, offsets) = serve(fetcher.clone(), data.clone(), 3_000, script);
    fetcher.fetch("ab", 10_000, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    // Two chunks arrived before the cut; the second session was asked for the rest only.
    assert_eq!(*offsets.lock().unwrap(), vec![0, 6_000]);
    server.abort();
}

#[tokio::test]
async fn a_partial_file_is_continued_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("r.tar.gz");
    let data = blob(10_000);
    std::fs::write(&dest, &data[..4_000]).unwrap();
    let fetcher = Fetcher::with_settings(quick());
    let (tx, mut rx) = mpsc::channel(4);
    let _session = fetcher.attach(tx);
    let f = fetcher.clone();
    let d = dest.clone();
    let client = tokio::spawn(async move { f.fetch("ab", 10_000, &d).await });
    let Some(agent_message::Body::Fetch(req)) = rx.recv().await.unwrap().body else {
        panic!("expected FetchRelease");
    };
    assert_eq!(req.offset, 4_000);
    assert_eq!(req.sha256, "ab");
    fetcher
        .deliver(ReleaseData {
            request_id: req.request_id,
            offset: 4_000,
            data: data[4_000..].to_vec(),
            last: true,
            error: String::new(),
        })
        .await;
    client.await.unwrap().unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[tokio::test]
async fn a_complete_file_needs_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("r.tar.gz");
    std::fs::write(&dest, blob(100)).unwrap();
    Fetcher::with_settings(quick())
        .fetch("ab", 100, &dest)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_refusal_ends_the_fetch_at_once_with_the_controllers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("r.tar.gz");
    let fetcher = Fetcher::with_settings(quick());
    let script = Script {
        refuse: Some("unknown release".into()),
        ..Script::default()
    };
    let (server, _) = serve(fetcher.clone(), blob(10), 3_000, script);
    let err = fetcher.fetch("ab", 10, &dest).await.unwrap_err();
    assert!(matches!(err, FetchError::Refused { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "controller refused to send release ab: unknown release"
    );
    server.abort();
}

#[tokio::test]
async fn more_bytes_than_expected_are_refused_and_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("r.tar.gz");
    let fetcher = Fetcher::with_settings(quick());
    let script = Script {
        extra: 1,
        ..Script::default()
    };
    let (server, _) = serve(fetcher.clone(), blob(6_000), 3_000, script);
    let err = fetcher.fetch("ab", 6_000, &dest).await.unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::TooLong {
                expected: 6_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(!dest.exists());
    server.abort();
}

#[tokio::test]
async fn fewer_bytes_than_expected_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("r.tar.gz");
    let fetcher = Fetcher::with_settings(quick());
    let (server, _) = serve(fetcher.clone(), blob(5_000), 3_000, Script::default());
    let err = fetcher.fetch("ab", 6_000, &dest).await.unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::Short {
                got: 5_000,
                expected: 6_000,
                ..
            }
        ),
        "{err}"
    );
    server.abort();
}

#[tokio::test]
async fn gives_up_when_never_connected() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("r.tar.gz");
    let err = Fetcher::with_settings(quick())
        .fetch("ab", 10, &dest)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::GaveUp { attempts: 3, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("not connected to the controller"),
        "{err}"
    );
}

#[tokio::test]
async fn an_empty_chunk_that_is_not_the_last_counts_as_a_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("r.tar.gz");
    let fetcher = Fetcher::with_settings(FetchSettings {
        attempts: 1,
        ..quick()
    });
    let (tx, mut rx) = mpsc::channel(4);
    let _session = fetcher.attach(tx);
    let f = fetcher.clone();
    let d = dest.clone();
    let client = tokio::spawn(async move { f.fetch("ab", 10, &d).await });
    let Some(agent_message::Body::Fetch(req)) = rx.recv().await.unwrap().body else {
        panic!("expected FetchRelease");
    };
    fetcher
        .deliver(ReleaseData {
            request_id: req.request_id,
            ..Default::default()
        })
        .await;
    let err = client.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("empty chunk at offset 0"), "{err}");
}

#[tokio::test]
async fn late_data_for_unknown_requests_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("r.tar.gz");
    let data = blob(1_000);
    let fetcher = Fetcher::with_settings(quick());
    let (tx, mut rx) = mpsc::channel(4);
    let _session = fetcher.attach(tx);
    let f = fetcher.clone();
    let d = dest.clone();
    let client = tokio::spawn(async move { f.fetch("ab", 1_000, &d).await });
    let Some(agent_message::Body::Fetch(req)) = rx.recv().await.unwrap().body else {
        panic!("expected FetchRelease");
    };
    // A late chunk of an earlier attempt, at the offset the live transfer is at: it
    // returns at once (nobody waits for it) and never reaches the file.
    tokio::time::timeout(
        Duration::from_secs(1),
        fetcher.deliver(ReleaseData {
            request_id: "nobody".into(),
            offset: 0,
            data: vec![0xff; 1_000],
            last: true,
            error: String::new(),
        }),
    )
    .await
    .expect("data nobody waits for does not block the stream");
    fetcher
        .deliver(ReleaseData {
            request_id: req.request_id,
            offset: 0,
            data: data.clone(),
            last: true,
            error: String::new(),
        })
        .await;
    client.await.unwrap().unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(lock(&fetcher.inner.pending).is_empty());
}
