//! The `Set-Cookie` values a refreshed request's response carries: the new session in the session
//! cookie, and a rotated refresh token in the refresh cookie, with the attributes of
//! `descope.refresh.cookie` and the lifetimes Descope gave (`cookieExpiration`/`cookieMaxAge`),
//! else each token's own `exp`. `Max-Age` is counted from now, so a reused outcome gives the
//! browser what is left, not what was.

use http::HeaderValue;

use super::{Refreshed, Refresher};

impl Refresher {
    /// The `Set-Cookie` values for `r`, at the clock's time.
    pub(crate) fn set_cookies(&self, r: &Refreshed) -> Vec<HeaderValue> {
        let now = self.clock.unix();
        let mut out = Vec::with_capacity(2);
        let until = r.cookie_until.unwrap_or(r.session_exp);
        out.extend(self.cookie(&self.session_cookie, &r.session_jwt, until, now, false));
        if let Some((jwt, exp)) = &r.refresh_jwt {
            let until = r.cookie_until.unwrap_or(*exp);
            out.extend(self.cookie(&self.refresh_cookie, jwt, until, now, true));
        }
        out
    }

    /// One cookie; `None` if the token could not be a header value (a verified JWT always can).
    fn cookie(
        &self,
        name: &str,
        value: &str,
        until: u64,
        now: u64,
        refresh: bool,
    ) -> Option<HeaderValue> {
        let c = &self.cookie;
        let mut s = format!("{name}={value}; Path={}", c.path);
        if let Some(d) = &c.domain {
            s.push_str("; Domain=");
            s.push_str(d);
        }
        s.push_str("; Max-Age=");
        s.push_str(&until.saturating_sub(now).to_string());
        if c.secure {
            s.push_str("; Secure");
        }
        // The refresh token is never for script: it is the long-lived credential.
        if refresh || c.http_only {
            s.push_str("; HttpOnly");
        }
        s.push_str("; SameSite=");
        s.push_str(c.same_site.as_str());
        HeaderValue::from_str(&s).ok()
    }
}
