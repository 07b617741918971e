//! Length-prefixed frames on a byte stream.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes. The length is
//! checked against [`MAX_FRAME_LEN`] before any buffer is allocated, by the reader and
//! by the writer alike ([`check_len`]), so a peer cannot make us reserve memory by
//! announcing a huge frame.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame body accepted or produced: 1 MiB. The largest legitimate message is a
/// full sync or mirror batch (see [`crate::MAX_BATCH_CHANGES`]), a few hundred KiB.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// What can go wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced (or requested) frame length exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Length announced by the prefix or asked of the writer.
        len: usize,
        /// The limit, [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received of the header or body.
        got: usize,
        /// Bytes that were expected.
        want: usize,
    },
    /// The underlying stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks a frame length against [`MAX_FRAME_LEN`]; shared by reader and writer.
pub fn check_len(len: usize) -> Result<(), FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(())
}

/// Reads one frame. `Ok(None)` means the stream closed cleanly between frames; a close
/// inside a frame is [`FrameError::Truncated`].
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Bytes>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                got,
                want: HEADER_LEN,
            });
        }
        got += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    check_len(len)?;
    let mut body = BytesMut::zeroed(len);
    let mut got = 0;
    while got < len {
        let n = r.read(&mut body[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated { got, want: len });
        }
        got += n;
    }
    Ok(Some(body.freeze()))
}

/// Writes one frame (header and body) and does not flush beyond what the stream does.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<(), FrameError> {
    let mut buf = Vec::with_capacity(HEADER_LEN + body.len());
    push_frame(&mut buf, body)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Appends one frame (header and body) to `out`, for a writer that sends several frames
/// in one write.
pub fn push_frame(out: &mut Vec<u8>, body: &[u8]) -> Result<(), FrameError> {
    check_len(body.len())?;
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// How much [`FrameReader`] asks of the stream at a time, at most: a frame announced as
/// large is read in steps, so its length prefix alone never reserves memory.
const READ_STEP: usize = 64 * 1024;

/// Reads frames from a stream through a buffer of its own.
///
/// Unlike [`read_frame`], [`FrameReader::next`] is cancel-safe: bytes that arrived before
/// a cancelled call stay in the buffer and complete the next one, so the reader can sit in
/// a `tokio::select!` beside other work without a task of its own.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::new(),
        }
    }

    /// The next frame. `Ok(None)` means the stream closed cleanly between frames; a
    /// close inside a frame is [`FrameError::Truncated`]. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            let want = if self.buf.len() < HEADER_LEN {
                HEADER_LEN
            } else {
                let mut header = [0u8; HEADER_LEN];
                header.copy_from_slice(&self.buf[..HEADER_LEN]);
                let len = u32::from_be_bytes(header) as usize;
                check_len(len)?;
                if self.buf.len() >= HEADER_LEN + len {
                    let mut frame = self.buf.split_to(HEADER_LEN + len);
                    return Ok(Some(frame.split_off(HEADER_LEN).freeze()));
                }
                HEADER_LEN + len
            };
            let missing = want - self.buf.len();
            self.buf.reserve(missing.clamp(HEADER_LEN, READ_STEP));
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let (got, want) = if self.buf.len() < HEADER_LEN {
                    (self.buf.len(), HEADER_LEN)
                } else {
                    (self.buf.len() - HEADER_LEN, want - HEADER_LEN)
                };
                return Err(FrameError::Truncated { got, want });
            }
        }
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_clean_close() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").await.unwrap();
        write_frame(&mut buf, b"").await.unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap(), &b"hello"[..]);
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap(), &b""[..]);
        assert!(read_frame(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn huge_prefix_rejected_before_allocation() {
        // u32::MAX would be a 4 GiB allocation if it were honoured; the body is absent,
        // so reaching the read would also show up as Truncated rather than TooLarge.
        let mut r = &[0xff, 0xff, 0xff, 0xff][..];
        match read_frame(&mut r).await {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as usize);
                assert_eq!(max, MAX_FRAME_LEN);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let just_over = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        let mut r = &just_over[..];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn frame_reader_matches_read_frame_and_survives_cancellation() {
        let mut buf = Vec::new();
        for body in [&b"hello"[..], b"", &[9u8; 70_000][..], b"end"] {
            write_frame(&mut buf, body).await.unwrap();
        }
        // A stream that yields one byte at a time and is cancelled after every poll that
        // is not ready: whatever arrived must not be lost.
        let (mut tx, rx) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut tx, &buf)
                .await
                .unwrap();
        });
        let mut reader = FrameReader::new(rx);
        let mut got = Vec::new();
        while got.len() < 4 {
            tokio::select! {
                biased;
                _ = tokio::task::yield_now() => {}
                f = reader.next() => got.push(f.unwrap().unwrap()),
            }
        }
        writer.await.unwrap();
        assert!(reader.next().await.unwrap().is_none());
        assert_eq!(got[0], &b"hello"[..]);
        assert!(got[1].is_empty());
        assert_eq!(got[2].len(), 70_000);
        assert_eq!(got[3], &b"end"[..]);
    }

    #[tokio::test]
    async fn frame_reader_errors_like_read_frame() {
        let mut r = FrameReader::new(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(r.next().await, Err(FrameError::TooLarge { .. })));
        let mut r = FrameReader::new(&[0u8, 0][..]);
        assert!(matches!(
            r.next().await,
            Err(FrameError::Truncated { got: 2, want: 4 })
        ));
        let mut r = FrameReader::new(&[0u8, 0, 0, 5, b'a', b'b'][..]);
        assert!(matches!(
            r.next().await,
            Err(FrameError::Truncated { got: 2, want: 5 })
        ));
    }

    #[tokio::test]
    async fn writer_refuses_oversized_body() {
        let mut out = Vec::new();
        let body = vec![0u8; MAX_FRAME_LEN + 1];
        assert!(matches!(
            write_frame(&mut out, &body).await,
            Err(FrameError::TooLarge { .. })
        ));
        assert!(out.is_empty(), "nothing may be written for a refused frame");
    }

    #[tokio::test]
    async fn truncated_header_and_body_are_errors() {
        let mut r = &[0u8, 0][..];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::Truncated { got: 2, want: 4 })
        ));
        let mut r = &[0u8, 0, 0, 5, b'a', b'b'][..];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::Truncated { got: 2, want: 5 })
        ));
    }
}
