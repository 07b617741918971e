//! What every fuzz target checks, shared with the corpus replay in `cargo test`
//! (tests/tests/fuzz_corpus.rs), so the saved corpus runs in CI without a fuzzer.
//!
//! Each target feeds the bytes to one decoder: it must never panic, and whatever it
//! accepts must encode and decode back to the same value.

use std::fmt::Debug;
use std::future::Future;
use std::task::{Context, Poll, Waker};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tsn_protocol::client::{ClientReply, ClientRequest, TimelineDown, TimelineUp};
use tsn_protocol::coord::{CoordReply, CoordRequest};
use tsn_protocol::mirror::{MirrorMsg, MirrorReply};
use tsn_protocol::sync::{SyncReply, SyncRequest};

/// Every target, by name (the directory names under `corpus/`).
// Used by the corpus replay test, not by the fuzz targets that include this file.
#[allow(dead_code)]
pub const TARGETS: &[&str] = &[
    "frame",
    "client_request",
    "client_reply",
    "timeline_up",
    "timeline_down",
    "coord_request",
    "coord_reply",
    "mirror_msg",
    "mirror_reply",
    "sync_request",
    "sync_reply",
    "record",
];

/// Runs one input through one target's checks.
pub fn replay(target: &str, data: &[u8]) {
    match target {
        "frame" => frames(data),
        "client_request" => message::<ClientRequest>(data),
        "client_reply" => message::<ClientReply>(data),
        "timeline_up" => message::<TimelineUp>(data),
        "timeline_down" => message::<TimelineDown>(data),
        "coord_request" => message::<CoordRequest>(data),
        "coord_reply" => message::<CoordReply>(data),
        "mirror_msg" => message::<MirrorMsg>(data),
        "mirror_reply" => message::<MirrorReply>(data),
        "sync_request" => message::<SyncRequest>(data),
        "sync_reply" => message::<SyncReply>(data),
        "record" => record(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

fn message<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    if let Ok(msg) = tsn_protocol::decode::<T>(data) {
        let again = tsn_protocol::encode(&msg).expect("a decoded message encodes");
        let back: T = tsn_protocol::decode(&again).expect("an encoded message decodes");
        assert_eq!(back, msg);
    }
}

/// Polls a future that never waits (reading from a byte slice) to completion.
fn block<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn frames(data: &[u8]) {
    let mut r = data;
    // Each frame consumes at least its 4-byte header, so this ends.
    while let Ok(Some(body)) = block(tsn_protocol::read_frame(&mut r)) {
        assert!(body.len() <= tsn_protocol::MAX_FRAME_LEN);
        // Whatever is read back must be written and read again unchanged.
        let mut out = Vec::new();
        block(tsn_protocol::write_frame(&mut out, &body)).expect("a read frame writes");
        let mut again = out.as_slice();
        let back = block(tsn_protocol::read_frame(&mut again))
            .expect("a written frame reads")
            .expect("a written frame is not a clean close");
        assert_eq!(back, body);
        assert!(again.is_empty(), "a frame reads exactly what was written");
    }
    // The buffered, cancel-safe reader sees exactly the frames `read_frame` sees, and
    // ends the same way (clean close, or an error of the same kind).
    let mut plain = data;
    let mut buffered = tsn_protocol::FrameReader::new(data);
    loop {
        let a = block(tsn_protocol::read_frame(&mut plain));
        let b = block(buffered.next());
        match (a, b) {
            (Ok(Some(x)), Ok(Some(y))) => assert_eq!(x, y),
            (Ok(None), Ok(None)) => break,
            (Err(x), Err(y)) => {
                assert_eq!(std::mem::discriminant(&x), std::mem::discriminant(&y));
                break;
            }
            (a, b) => panic!("read_frame gave {a:?}, FrameReader gave {b:?}"),
        }
    }
}

fn record(data: &[u8]) {
    use tsn_datastore::RecordLine;
    if let Ok(r) = tsn_datastore::Record::decode_bytes(data) {
        let line = r.encode_line();
        let back = tsn_datastore::Record::decode_line(
            line.strip_suffix('\n').expect("lines end in a newline"),
        )
        .expect("an encoded record decodes");
        assert_eq!(back, r);
    }
}
