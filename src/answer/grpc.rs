//! The gRPC shape of an [`Answer`]: a gRPC client cannot read an HTTP status or a JSON body, so
//! a refusal of a call whose `content-type` is `application/grpc*` is written as a gRPC
//! Trailers-Only response (HTTP 200, `grpc-status`, percent-encoded `grpc-message`, end of stream
//! on the header block), as Envoy answers one. The HTTP status maps to the code the gRPC status
//! table (`doc/http-grpc-status-mapping.md`) and Envoy give it.

use super::Answer;

/// Whether a request is a gRPC call (`application/grpc`, `application/grpc+proto`, ...).
pub(crate) fn is_grpc(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|v| {
        let v = v.trim_ascii_start();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && v.get(16).is_none_or(|b| matches!(b, b'+' | b';' | b' '))
    })
}

/// The gRPC status code for an HTTP status extoken answers with.
pub(crate) fn grpc_status(http: u16) -> u8 {
    match http {
        // INVALID_ARGUMENT: the call itself is malformed (target, host, headers).
        400 | 431 => 3,
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 => 12,       // UNIMPLEMENTED: no route for this method
        408 | 504 => 4,  // DEADLINE_EXCEEDED
        413 | 429 => 8,  // RESOURCE_EXHAUSTED
        502 | 503 => 14, // UNAVAILABLE: a client may retry
        _ => 13,         // INTERNAL
    }
}

impl Answer {
    /// `grpc-status` of this answer.
    pub(crate) fn grpc_status(&self) -> u8 {
        grpc_status(self.status)
    }

    /// `grpc-message`: the body's description, percent-encoded as the gRPC wire spec requires
    /// (every byte outside 0x20–0x7E, and `%`).
    pub(crate) fn grpc_message(&self) -> String {
        let description = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error_description")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut out = String::with_capacity(description.len());
        for b in description.bytes() {
            if (0x20..=0x7e).contains(&b) && b != b'%' {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::AuthError;

    #[test]
    fn grpc_content_types() {
        for v in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc; charset=x",
        ] {
            assert!(is_grpc(Some(v.as_bytes())), "{v}");
        }
        for v in [
            "application/grpc-web",
            "application/json",
            "application/grpcx",
            "",
        ] {
            assert!(!is_grpc(Some(v.as_bytes())), "{v}");
        }
        assert!(!is_grpc(None));
    }

    #[test]
    fn statuses_map_as_envoy_maps_them() {
        let table = [
            (400, 3),
            (401, 16),
            (403, 7),
            (404, 12),
            (408, 4),
            (413, 8),
            (431, 3),
            (500, 13),
            (502, 14),
            (503, 14),
            (504, 4),
        ];
        for (http, grpc) in table {
            assert_eq!(grpc_status(http), grpc, "{http}");
        }
    }

    #[test]
    fn the_message_is_the_description_percent_encoded() {
        let a = Answer::unauthorized(&AuthError::Missing);
        assert_eq!(a.grpc_status(), 16);
        let m = a.grpc_message();
        assert!(
            m.starts_with("no session token: send Authorization: Bearer"),
            "{m}"
        );
        let a = Answer::bad_request("100% caf\u{e9}\n", "x");
        assert_eq!(a.grpc_message(), "100%25 caf%C3%A9%0A");
    }
}
