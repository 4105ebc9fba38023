//! Fault injection: make the next requests on a resource fail, stall or lose their watches.
//!
//! A `resource` is a plural name such as `"configmaps"` (any API group), `"pods/status"` for a
//! subresource only, or `"*"` for every resource.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use ktrigger_core::sync::lock;
use tokio::sync::broadcast;

/// Faults to inject into the test cluster; every method is thread-safe.
#[derive(Debug)]
pub struct Faults {
    state: Mutex<FaultState>,
    drops: broadcast::Sender<String>,
}

#[derive(Debug, Default)]
struct FaultState {
    gone: HashMap<String, u32>,
    conflicts: HashMap<String, u32>,
    failures: HashMap<String, u32>,
    delays: HashMap<String, Duration>,
    forbidden: HashSet<(String, String)>,
}

/// The name [`Faults::delay`] takes for discovery requests.
pub const DISCOVERY: &str = "discovery";

/// The fault keys a request on `plural` (and maybe `subresource`) answers to, most specific first.
fn keys(plural: &str, subresource: Option<&str>) -> Vec<String> {
    let mut keys = Vec::with_capacity(3);
    if let Some(sub) = subresource {
        keys.push(format!("{plural}/{sub}"));
    }
    keys.push(plural.to_string());
    keys.push("*".to_string());
    keys
}

/// Takes one from the first counter among `keys` that is above zero.
fn take(counters: &mut HashMap<String, u32>, keys: &[String]) -> bool {
    for key in keys {
        if let Some(n) = counters.get_mut(key)
            && *n > 0
        {
            *n -= 1;
            if *n == 0 {
                counters.remove(key);
            }
            return true;
        }
    }
    false
}

impl Default for Faults {
    fn default() -> Self {
        Faults { state: Mutex::default(), drops: broadcast::channel(64).0 }
    }
}

impl Faults {
    fn state(&self) -> std::sync::MutexGuard<'_, FaultState> {
        lock(&self.state)
    }

    /// The next watch of `resource` gets an ERROR event with a 410 Gone `Status` and ends.
    pub fn gone_on_next_watch(&self, resource: &str) {
        *self.state().gone.entry(resource.to_string()).or_default() += 1;
    }

    /// Closes every watch stream of `resource` open right now; clients see the stream end.
    pub fn drop_watches(&self, resource: &str) {
        let _ = self.drops.send(resource.to_string());
    }

    /// The next update or patch of `resource` fails with 409 Conflict.
    pub fn conflict_on_next_write(&self, resource: &str) {
        *self.state().conflicts.entry(resource.to_string()).or_default() += 1;
    }

    /// The next `n` requests on `resource` (any verb) fail with 500 InternalError.
    pub fn fail_next(&self, n: u32, resource: &str) {
        *self.state().failures.entry(resource.to_string()).or_default() += n;
    }

    /// Every request on `resource` waits `delay` before it is served, until cleared; `resource`
    /// [`DISCOVERY`] delays the resource lists of API versions (`/api/v1`, `/apis/GROUP/VERSION`).
    pub fn delay(&self, resource: &str, delay: Duration) {
        self.state().delays.insert(resource.to_string(), delay);
    }

    /// Stops delaying requests on `resource`.
    pub fn clear_delay(&self, resource: &str) {
        self.state().delays.remove(resource);
    }

    /// Requests with `verb` (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection` or `*`) on `resource` fail with 403 Forbidden until allowed again.
    pub fn forbid(&self, verb: &str, resource: &str) {
        self.state().forbidden.insert((verb.to_string(), resource.to_string()));
    }

    /// Lifts a `forbid` of the same verb and resource.
    pub fn allow(&self, verb: &str, resource: &str) {
        self.state().forbidden.remove(&(verb.to_string(), resource.to_string()));
    }

    /// Removes every pending fault.
    pub fn clear(&self) {
        *self.state() = FaultState::default();
    }

    pub(crate) fn take_gone(&self, plural: &str) -> bool {
        take(&mut self.state().gone, &keys(plural, None))
    }

    pub(crate) fn take_conflict(&self, plural: &str, subresource: Option<&str>) -> bool {
        take(&mut self.state().conflicts, &keys(plural, subresource))
    }

    pub(crate) fn take_failure(&self, plural: &str, subresource: Option<&str>) -> bool {
        take(&mut self.state().failures, &keys(plural, subresource))
    }

    pub(crate) fn delay_for(&self, plural: &str, subresource: Option<&str>) -> Option<Duration> {
        let state = self.state();
        keys(plural, subresource).iter().find_map(|k| state.delays.get(k).copied())
    }

    pub(crate) fn is_forbidden(&self, verb: &str, plural: &str, subresource: Option<&str>) -> bool {
        let state = self.state();
        keys(plural, subresource)
            .iter()
            .any(|k| [verb, "*"].iter().any(|v| state.forbidden.contains(&(v.to_string(), k.clone()))))
    }

    /// A receiver of `drop_watches` signals, for one watch stream.
    pub(crate) fn subscribe_drops(&self) -> broadcast::Receiver<String> {
        self.drops.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_are_consumed_and_match_by_resource() {
        let faults = Faults::default();
        faults.fail_next(2, "configmaps");
        assert!(!faults.take_failure("secrets", None));
        assert!(faults.take_failure("configmaps", None));
        assert!(faults.take_failure("configmaps", Some("status")));
        assert!(!faults.take_failure("configmaps", None));

        faults.conflict_on_next_write("pods/status");
        assert!(!faults.take_conflict("pods", None));
        assert!(faults.take_conflict("pods", Some("status")));

        faults.gone_on_next_watch("*");
        assert!(faults.take_gone("anything"));
        assert!(!faults.take_gone("anything"));
    }

    #[test]
    fn forbid_and_delay_last_until_cleared() {
        let faults = Faults::default();
        faults.forbid("list", "secrets");
        faults.forbid("*", "leases");
        faults.delay("pods", Duration::from_millis(5));
        for _ in 0..2 {
            assert!(faults.is_forbidden("list", "secrets", None));
            assert!(faults.is_forbidden("update", "leases", None));
            assert_eq!(faults.delay_for("pods", Some("status")), Some(Duration::from_millis(5)));
        }
        assert!(!faults.is_forbidden("get", "secrets", None));
        faults.allow("list", "secrets");
        assert!(!faults.is_forbidden("list", "secrets", None));
        faults.clear();
        assert!(!faults.is_forbidden("update", "leases", None));
        assert_eq!(faults.delay_for("pods", None), None);
    }
}
