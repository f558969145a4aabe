//! The WebSocket framing the client adapter needs to end an upgraded connection politely: the
//! close frame it sends when the opening session expires, and where the server's frames end, so
//! that close frame never lands inside another frame.

/// WebSocket close code 1008: the session that opened the socket is no longer valid.
const POLICY_VIOLATION: u16 = 1008;

/// The close frame a server sends (unmasked, RFC 6455 §5.5.1): FIN + opcode 8, the code, a reason.
pub(crate) fn close_frame() -> Vec<u8> {
    const REASON: &[u8] = b"session expired";
    let mut f = Vec::with_capacity(4 + REASON.len());
    f.push(0x88);
    // Control frames carry at most 125 bytes: the code and this reason fit in one length byte.
    f.push(2 + REASON.len() as u8);
    f.extend_from_slice(&POLICY_VIOLATION.to_be_bytes());
    f.extend_from_slice(REASON);
    f
}

/// Follows the frames a server writes to the client, to tell whether a close frame may be
/// inserted now (not inside another frame). Server frames are unmasked (RFC 6455 §5.1).
/// The `101` response head is written after the connection is marked upgraded: frames start
/// after its blank line.
#[derive(Debug, Default)]
pub(crate) struct FrameTracker {
    /// The last four bytes of the `101` head written so far (its blank line ends it).
    http_head: Option<u32>,
    head_done: bool,
    /// The header of the frame being read, as far as it came.
    head: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The stream is not WebSocket framing (another upgrade): never insert a frame.
    lost: bool,
}

impl FrameTracker {
    /// Bytes written to the client, in order.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !self.head_done && !bytes.is_empty() {
            // The last four bytes, as a number: `\r\n\r\n` ends the head.
            let last = self.http_head.unwrap_or(0);
            let last = last << 8 | u32::from(bytes[0]);
            self.http_head = Some(last);
            bytes = &bytes[1..];
            self.head_done = last == u32::from_be_bytes(*b"\r\n\r\n");
        }
        while !bytes.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.head.push(bytes[0]);
            bytes = &bytes[1..];
            if let Some(len) = self.header_done() {
                self.head.clear();
                self.payload_left = len;
            }
        }
    }

    /// The payload length once the header is complete.
    fn header_done(&mut self) -> Option<u64> {
        let h = &self.head;
        if h.len() < 2 {
            return None;
        }
        if h[1] & 0x80 != 0 {
            // A masked frame from a server is not WebSocket as RFC 6455 writes it.
            self.lost = true;
            return None;
        }
        match h[1] & 0x7f {
            126 if h.len() == 4 => Some(u64::from(u16::from_be_bytes([h[2], h[3]]))),
            127 if h.len() == 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                Some(u64::from_be_bytes(b))
            }
            126 | 127 => None,
            n => Some(u64::from(n)),
        }
    }

    /// Whether a frame may be written now.
    pub(crate) fn at_boundary(&self) -> bool {
        self.head_done && !self.lost && self.head.is_empty() && self.payload_left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_followed_across_writes() {
        let mut t = FrameTracker::default();
        assert!(!t.at_boundary(), "inside the 101 head");
        t.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n");
        assert!(!t.at_boundary());
        t.feed(b"\r\n");
        assert!(t.at_boundary());
        // A text frame "hi", split across writes.
        t.feed(&[0x81]);
        assert!(!t.at_boundary());
        t.feed(&[0x02, b'h']);
        assert!(!t.at_boundary());
        t.feed(b"i");
        assert!(t.at_boundary());
        // A 300-byte binary frame (16-bit length) and a 70000-byte one (64-bit), then a ping.
        let mut big = vec![0x82, 126, 0x01, 0x2c];
        big.extend(std::iter::repeat_n(0u8, 300));
        big.extend_from_slice(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        t.feed(&big);
        assert!(!t.at_boundary());
        t.feed(&vec![0u8; 70_000]);
        assert!(t.at_boundary());
        t.feed(&[0x89, 0x00]);
        assert!(t.at_boundary());
        // A masked frame from the server: not RFC 6455 framing, never interrupted.
        t.feed(&[0x81, 0x81, 1, 2, 3, 4, 5]);
        assert!(!t.at_boundary());
    }

    #[test]
    fn the_close_frame_says_1008() {
        let f = close_frame();
        assert_eq!(&f[..4], &[0x88, 17, 0x03, 0xf0]);
        assert_eq!(&f[4..], b"session expired");
    }
}
