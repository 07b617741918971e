//! The versioned envelope around every message.
//!
//! A message is encoded as postcard `(PROTOCOL_VERSION, message)`. The decoder reads the
//! version first and refuses a mismatch with [`CodecError::Version`], then decodes the
//! message and refuses trailing bytes, so a frame has exactly one meaning.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::frame::{self, FrameError};
use crate::PROTOCOL_VERSION;

/// What can go wrong turning bytes into a message or back.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The frame layer failed (I/O, truncation, oversized frame).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {theirs}, this build speaks {ours}")]
    Version {
        /// Our [`PROTOCOL_VERSION`].
        ours: u16,
        /// The version the peer sent.
        theirs: u16,
    },
    /// The bytes are not a valid message of the expected kind.
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
    /// A valid message was followed by extra bytes in the same frame.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
}

/// Encodes `msg` in the versioned envelope.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_stdvec(&(PROTOCOL_VERSION, msg))?)
}

/// Decodes a message from one frame body, checking the version and that nothing trails.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (version, rest): (u16, &[u8]) = postcard::take_from_bytes(bytes)?;
    if version != PROTOCOL_VERSION {
        return Err(CodecError::Version {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    let (msg, rest): (T, &[u8]) = postcard::take_from_bytes(rest)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Reads and decodes one message; `Ok(None)` on a clean close between frames.
pub async fn read_msg<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<T>, CodecError> {
    match frame::read_frame(r).await? {
        None => Ok(None),
        Some(body) => decode(&body).map(Some),
    }
}

impl<R: AsyncRead + Unpin> frame::FrameReader<R> {
    /// Reads and decodes the next message; `Ok(None)` on a clean close between frames.
    /// Cancel-safe, like [`frame::FrameReader::next`].
    pub async fn next_msg<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        match self.next().await? {
            None => Ok(None),
            Some(body) => decode(&body).map(Some),
        }
    }
}

/// Appends `msg` to `out` as a whole frame (header and body), for a writer that sends
/// several messages in one write.
pub fn push_msg<T: Serialize>(out: &mut Vec<u8>, msg: &T) -> Result<(), CodecError> {
    frame::push_frame(out, &encode(msg)?)?;
    Ok(())
}

/// Encodes and writes one message as a frame.
pub async fn write_msg<T: Serialize, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &T,
) -> Result<(), CodecError> {
    let body = encode(msg)?;
    frame::write_frame(w, &body).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientRequest;

    #[tokio::test]
    async fn pushed_messages_read_back_one_by_one() {
        let mut out = Vec::new();
        push_msg(&mut out, &ClientRequest::List { user: 1 }).unwrap();
        push_msg(&mut out, &ClientRequest::List { user: 2 }).unwrap();
        let mut r = out.as_slice();
        let a: Option<ClientRequest> = read_msg(&mut r).await.unwrap();
        let b: Option<ClientRequest> = read_msg(&mut r).await.unwrap();
        let end: Option<ClientRequest> = read_msg(&mut r).await.unwrap();
        assert_eq!(a, Some(ClientRequest::List { user: 1 }));
        assert_eq!(b, Some(ClientRequest::List { user: 2 }));
        assert_eq!(end, None);
    }

    #[test]
    fn version_mismatch_is_reported() {
        let bytes =
            postcard::to_stdvec(&(PROTOCOL_VERSION + 1, ClientRequest::List { user: 3 })).unwrap();
        match decode::<ClientRequest>(&bytes) {
            Err(CodecError::Version { ours, theirs }) => {
                assert_eq!(ours, PROTOCOL_VERSION);
                assert_eq!(theirs, PROTOCOL_VERSION + 1);
            }
            other => panic!("expected a version error, got {other:?}"),
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&ClientRequest::List { user: 3 }).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<ClientRequest>(&bytes),
            Err(CodecError::TrailingBytes(1))
        ));
    }
}
