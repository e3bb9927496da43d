//! Tests of the transport: frames, deadlines and limits over raw bytes, in
//! paused time.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::*;
use crate::{Downstream, ErrorKind, Upstream};

const DEADLINES: Deadlines = Deadlines {
    idle: Duration::from_secs(90),
    frame: Duration::from_secs(10),
};

/// A reader over raw bytes the test sends.
fn raw() -> (mpsc::Sender<Bytes>, Reader<Frames>) {
    let (tx, rx) = mpsc::channel(64);
    (tx, Reader::new(Frames(rx), 1024, DEADLINES))
}

#[tokio::test(start_paused = true)]
async fn messages_written_are_read_in_order() {
    let (writer, body) = Writer::new(Duration::from_secs(10));
    let mut reader = Reader::new(body, 1024, DEADLINES);
    writer.send(&Upstream::Ping).await.unwrap();
    writer
        .send(&Upstream::Error(crate::Problem::new(
            ErrorKind::Internal,
            "x",
        )))
        .await
        .unwrap();
    assert_eq!(
        reader.next::<Upstream>().await.unwrap(),
        Some(Upstream::Ping)
    );
    assert!(matches!(
        reader.next::<Upstream>().await.unwrap(),
        Some(Upstream::Error(_))
    ));
    drop(writer);
    assert_eq!(reader.next::<Upstream>().await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_trickling_peer_is_cut_off_when_the_frame_deadline_passes() {
    let (tx, mut reader) = raw();
    let frame = encode(&Upstream::Ping).unwrap();
    let started = Instant::now();
    // One byte every 2 s: never idle for long, never a whole frame.
    let trickle = tokio::spawn(async move {
        for b in frame.iter().cycle() {
            if tx.send(Bytes::copy_from_slice(&[*b])).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    // The first frame is 4 + 15 bytes: at a byte per 2 s it would take
    // 38 s; the reader gives up at 10 s.
    let err = reader.next::<Upstream>().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                what: "whole frame",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Timeout);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(11),
        "{took:?}"
    );
    trickle.abort();
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_cut_off_at_the_idle_deadline() {
    let (_tx, mut reader) = raw();
    let started = Instant::now();
    let err = reader.next::<Downstream>().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                what: "message",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(started.elapsed(), DEADLINES.idle);
}

#[tokio::test(start_paused = true)]
async fn a_huge_frame_is_refused_from_its_header() {
    let (tx, mut reader) = raw();
    tx.send(Bytes::copy_from_slice(&(512u32 << 20).to_be_bytes()))
        .await
        .unwrap();
    let err = reader.next::<Upstream>().await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_body_ending_mid_frame_is_truncated() {
    let (tx, mut reader) = raw();
    let frame = encode(&Upstream::Ping).unwrap();
    tx.send(frame.slice(..6)).await.unwrap();
    drop(tx);
    let err = reader.next::<Upstream>().await.unwrap_err();
    assert!(matches!(err, Error::Truncated { buffered: 6 }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_fails_the_write_at_its_deadline() {
    let (writer, _body) = Writer::new(Duration::from_secs(5));
    for _ in 0..QUEUE {
        writer.send(&Downstream::Ping).await.unwrap();
    }
    let started = Instant::now();
    let err = writer.send(&Downstream::Ping).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                what: "room to write",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    drop(_body);
    assert!(matches!(
        writer.send(&Downstream::Ping).await,
        Err(Error::Closed)
    ));
}

#[tokio::test(start_paused = true)]
async fn the_rate_allows_its_burst_then_its_rate() {
    let mut rate = Rate::new(10, 20);
    for _ in 0..20 {
        rate.take().unwrap();
    }
    assert!(matches!(
        rate.take(),
        Err(Error::RateLimited { per_second: 10 })
    ));
    tokio::time::advance(Duration::from_millis(100)).await;
    rate.take().unwrap();
    assert!(rate.take().is_err());
    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..20 {
        rate.take().unwrap();
    }
    assert!(rate.take().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_read_cancelled_and_started_again_keeps_its_idle_deadline() {
    let (_tx, mut reader) = raw();
    let started = Instant::now();
    // As a stream loop does: a read raced against a 30 s ping, again and
    // again. The deadline still counts from the last bytes received.
    let err = loop {
        tokio::select! {
            r = reader.next::<Upstream>() => break r.unwrap_err(),
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    };
    assert!(
        matches!(
            err,
            Error::Timeout {
                what: "message",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(started.elapsed(), DEADLINES.idle);
}
