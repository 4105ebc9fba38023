//! "Did you mean …?": the known name closest to a misspelled one, read from the error messages
//! that list the names they expected.

/// Names longer than this are not compared: no real field or type name is that long.
const MAX_NAME: usize = 64;

/// The known name closest to the unknown one that `message` reports, when one is close enough
/// to be a likely typo. Understands serde's `unknown field `x`, expected one of `a`, `b`` and the
/// registry's `unknown source type "x"; known types: a, b`.
pub fn did_you_mean(message: &str) -> Option<String> {
    let (unknown, candidates) = unknown_field(message).or_else(|| unknown_name(message))?;
    closest(&unknown, &candidates)
}

/// `unknown field `filters`, expected one of `name`, `filter`` (or `expected `a` or `b``).
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let candidates = expected.split('`').skip(1).step_by(2).map(str::to_string).collect();
    Some((unknown.to_string(), candidates))
}

/// `unknown source type "cronn"; known types: cron, webhook` and the like: the unknown name
/// quoted, then `;`-separated lists, each after its label and `: `.
fn unknown_name(message: &str) -> Option<(String, Vec<String>)> {
    let start = message.find("unknown ")?;
    let mut quoted = message[start..].splitn(3, '"').skip(1);
    let unknown = quoted.next()?;
    let lists = quoted.next()?;
    let candidates = lists
        .split(';')
        .filter_map(|list| list.rsplit_once(": ").map(|(_, names)| names))
        .flat_map(|names| names.split(','))
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect();
    Some((unknown.to_string(), candidates))
}

/// The candidate at the smallest edit distance, if that distance is small for the name's length.
pub fn closest(unknown: &str, candidates: &[String]) -> Option<String> {
    if unknown.len() > MAX_NAME {
        return None;
    }
    let limit = (unknown.chars().count() / 3).max(1);
    candidates
        .iter()
        .filter(|candidate| candidate.len() <= MAX_NAME && candidate.as_str() != unknown)
        .map(|candidate| (strsim::levenshtein(&unknown.to_lowercase(), &candidate.to_lowercase()), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelled_type_gets_the_closest_known_one() {
        let message = "unknown source type \"cronn\"; known types: cron, http-poller, k8s-events, webhook";
        assert_eq!(did_you_mean(message).as_deref(), Some("cron"));
    }

    #[test]
    fn a_misspelled_field_gets_the_closest_expected_one() {
        let message = "unknown field `filters`, expected one of `name`, `source`, `filter`, `dedup`";
        assert_eq!(did_you_mean(message).as_deref(), Some("filter"));
        assert_eq!(did_you_mean("unknown field `windw`, expected `key` or `window`").as_deref(), Some("window"));
    }

    #[test]
    fn a_preset_list_after_several_colons_is_read() {
        let message = "properties.presets: unknown preset \"pod-restarts\"; built-in: oom-kill, pod-restart; \
                       custom (from `mappings` or --event-mappings): crash-storm";
        assert_eq!(did_you_mean(message).as_deref(), Some("pod-restart"));
    }

    #[test]
    fn nothing_is_suggested_for_a_name_far_from_every_known_one() {
        let message = "unknown destination type \"fax\"; known types: log, webhook, slack";
        assert_eq!(did_you_mean(message), None);
        assert_eq!(did_you_mean("invalid type: integer `10`, expected a string"), None);
    }
}
