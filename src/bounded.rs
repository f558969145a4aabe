//! Reading the body of an outbound HTTP reply (JWKS, connectors, OAuth token endpoints) with a
//! size limit enforced while it streams in.
//!
//! `reqwest`'s `bytes()`/`json()` buffer whatever the peer sends; a misbehaving or hostile
//! endpoint answering 50 MB would be held in memory whole before any check could run. Here a
//! `Content-Length` above the limit is refused before a byte of the body is read, and a body
//! without one (chunked, or a lying server) is refused as soon as the running count passes the
//! limit, so at most `limit` bytes (plus one network chunk) are ever held. Dropping the
//! response then closes its connection instead of draining the rest into the pool.

/// Why a bounded body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("reply is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The transfer failed or timed out (the message has no URL: it may carry an API key).
    #[error("reading the reply failed: {0}")]
    Read(String),
}

/// Reads `resp`'s whole body if it is at most `limit` bytes.
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = resp.content_length();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    // Sized from the declared length when there is one (never beyond the limit); small otherwise,
    // so a chunked reply grows the buffer only as its bytes actually arrive.
    let capacity = declared.map_or(8 * 1024, |n| n as usize).min(limit);
    let mut body = Vec::with_capacity(capacity);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server on loopback that answers with `head` then `chunks` of `chunk` bytes
    /// (each written as it goes, so the server never holds the whole body either).
    async fn serve(head: String, chunks: usize, chunk: Vec<u8>, chunked: bool) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for _ in 0..chunks {
                let framed = if chunked {
                    s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                        .await
                        .is_ok()
                } else {
                    true
                };
                if !framed || s.write_all(&chunk).await.is_err() {
                    return; // the reader gave up: that is the point
                }
                if chunked && s.write_all(b"\r\n").await.is_err() {
                    return;
                }
            }
            if chunked {
                let _ = s.write_all(b"0\r\n\r\n").await;
            }
        });
        format!("http://{addr}/")
    }

    async fn get(url: &str) -> reqwest::Response {
        reqwest::Client::new().get(url).send().await.unwrap()
    }

    #[tokio::test]
    async fn small_bodies_are_read_whole() {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n";
        let url = serve(head.into(), 2, b"12345".to_vec(), false).await;
        assert_eq!(read_body(get(&url).await, 10).await.unwrap(), b"1234512345");
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let url = serve(head.into(), 3, b"abcd".to_vec(), true).await;
        assert_eq!(
            read_body(get(&url).await, 12).await.unwrap(),
            b"abcdabcdabcd"
        );
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n";
        let url = serve(head.into(), 1, b"12345678901".to_vec(), false).await;
        let e = read_body(get(&url).await, 10).await.unwrap_err();
        assert!(matches!(e, BodyError::TooLarge { limit: 10 }), "{e:?}");
    }

    #[tokio::test]
    async fn a_chunked_body_over_the_limit_is_refused_while_streaming() {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        // 64 MiB offered; the reader stops after 1 MiB.
        let url = serve(head.into(), 1024, vec![b'x'; 64 * 1024], true).await;
        let e = read_body(get(&url).await, 1024 * 1024).await.unwrap_err();
        assert!(matches!(e, BodyError::TooLarge { .. }), "{e:?}");
        assert_eq!(e.to_string(), "reply is larger than 1048576 bytes");
    }

    #[tokio::test]
    async fn a_cut_body_is_a_read_error() {
        // Promises 100 bytes, sends 5, closes.
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        let url = serve(head.into(), 1, b"12345".to_vec(), false).await;
        let e = read_body(get(&url).await, 1000).await.unwrap_err();
        assert!(matches!(e, BodyError::Read(_)), "{e:?}");
    }
}
