//! The request metrics of one route, resolved once: a `with_label_values` lookup hashes the label
//! strings and takes a lock, which the hot path should not pay per request. Each child is looked
//! up on its first use and kept (so `/metrics` shows exactly the series that were used).

use std::sync::{Arc, OnceLock};

use prometheus::{Histogram, IntCounter};

use super::{metrics, status_class};

/// Every `outcome` label value a request can end with.
pub(crate) const OUTCOMES: [&str; 10] = [
    "forwarded",
    "unauthorized",
    "forbidden",
    "bad_request",
    "unavailable",
    "no_route",
    "upstream_error",
    "upstream_timeout",
    "refused",
    "client_error",
];

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `requests_total`, `request_duration_seconds` and `upstream_responses_total` of one route.
pub(crate) struct RouteMetrics {
    name: Arc<str>,
    outcomes: [OnceLock<IntCounter>; OUTCOMES.len()],
    classes: [OnceLock<IntCounter>; CLASSES.len()],
    duration: OnceLock<Histogram>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RouteMetrics({})", self.name)
    }
}

impl RouteMetrics {
    pub(crate) fn new(name: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            name: name.into(),
            outcomes: Default::default(),
            classes: Default::default(),
            duration: OnceLock::new(),
        })
    }

    /// The series of requests that matched no route (`route="unmatched"`).
    pub(crate) fn unmatched() -> Arc<RouteMetrics> {
        static U: OnceLock<Arc<RouteMetrics>> = OnceLock::new();
        U.get_or_init(|| RouteMetrics::new("unmatched")).clone()
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn count(&self, outcome: &str) {
        match OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => self.outcomes[i]
                .get_or_init(|| child(&[&self.name, OUTCOMES[i]]))
                .inc(),
            // A word not in the table still counts (and shows up in review as a lookup).
            None => metrics()
                .requests_total
                .with_label_values(&[&self.name, outcome])
                .inc(),
        }
    }

    pub(crate) fn observe(&self, seconds: f64) {
        self.duration
            .get_or_init(|| {
                metrics()
                    .request_duration_seconds
                    .with_label_values(&[&self.name])
            })
            .observe(seconds);
    }

    pub(crate) fn upstream(&self, status: u16) {
        let class = status_class(status);
        let i = CLASSES.iter().position(|c| *c == class).unwrap_or(4);
        self.classes[i]
            .get_or_init(|| {
                metrics()
                    .upstream_responses_total
                    .with_label_values(&[&self.name, CLASSES[i]])
            })
            .inc();
    }
}

fn child(labels: &[&str]) -> IntCounter {
    metrics().requests_total.with_label_values(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_children_are_the_registry_series() {
        let r = RouteMetrics::new("per-route-test");
        r.count("forwarded");
        r.count("forwarded");
        r.count("an_unlisted_word");
        r.upstream(204);
        r.observe(0.002);
        let m = metrics();
        let get = |o: &str| {
            m.requests_total
                .with_label_values(&["per-route-test", o])
                .get()
        };
        assert_eq!((get("forwarded"), get("an_unlisted_word")), (2, 1));
        assert_eq!(
            m.upstream_responses_total
                .with_label_values(&["per-route-test", "2xx"])
                .get(),
            1
        );
        // A second handle for the same route (a reload) shares the series.
        RouteMetrics::new("per-route-test").count("forwarded");
        assert_eq!(get("forwarded"), 3);
    }
}
