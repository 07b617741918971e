//! The two ends of a client's stream, whichever transport carries it: a `tsn/1` QUIC
//! stream, or a stream of a browser's WebTransport session (which runs on QUIC too, with
//! a small header of its own that `web-transport-quinn` reads and writes).

use tokio::io::{AsyncRead, AsyncWrite};

/// The sending half of a stream that commands answer on.
pub trait SendHalf: AsyncWrite + Unpin + Send + 'static {
    /// Ends the stream cleanly after what was written.
    fn finish_stream(&mut self);
    /// Abandons the stream: the peer sees it reset with `code`.
    fn reset_stream(&mut self, code: u32);
}

/// The receiving half of such a stream.
pub trait RecvHalf: AsyncRead + Unpin + Send + 'static {}

impl<R: AsyncRead + Unpin + Send + 'static> RecvHalf for R {}

impl SendHalf for quinn::SendStream {
    fn finish_stream(&mut self) {
        let _ = self.finish();
    }

    fn reset_stream(&mut self, code: u32) {
        let _ = self.reset(code.into());
    }
}

impl SendHalf for web_transport_quinn::SendStream {
    fn finish_stream(&mut self) {
        let _ = self.finish();
    }

    fn reset_stream(&mut self, code: u32) {
        let _ = self.reset(code);
    }
}
