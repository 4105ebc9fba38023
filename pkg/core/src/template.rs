//! Text templates (prompts, bodies, messages): minijinja over the event context, bounded: a
//! template is at most [`MAX_TEMPLATE`] bytes, one rendering runs at most [`FUEL`] instructions
//! (loops included) and produces at most [`MAX_OUTPUT`] bytes.

use std::io;
use std::sync::Arc;

use chrono::Utc;
use minijinja::{Environment, UndefinedBehavior};

use crate::event::{CONTEXT_NAMES, Event};

const TEMPLATE_NAME: &str = "template";

/// Longest template source, in bytes.
pub const MAX_TEMPLATE: usize = 64 * 1024;

/// Most instructions one rendering may run: a loop over 10,000 items with a few expressions
/// each, and rendering stops within milliseconds.
pub const FUEL: u64 = 100_000;

/// Most bytes one rendering may produce.
pub const MAX_OUTPUT: usize = 1024 * 1024;

/// A template checked at load time: it parses, and refers only to context names.
#[derive(Clone)]
pub struct Template {
    env: Arc<Environment<'static>>,
    uses_old_object: bool,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template").finish_non_exhaustive()
    }
}

/// The values a template renders against: the event context as seen by one trigger.
#[derive(Debug, Clone)]
pub struct TemplateScope(minijinja::Value);

impl TemplateScope {
    /// The scope of `event` for `trigger`, with `now` taken at this moment.
    pub fn new(event: &Event, trigger: &str) -> Self {
        TemplateScope(minijinja::Value::from(minijinja::value::Serde(event.context_value(trigger, Utc::now()))))
    }
}

impl Template {
    /// Parses `source`; an unknown variable, a syntax error or a template longer than
    /// [`MAX_TEMPLATE`] is an error, with its line where it has one. minijinja's own globals
    /// (`range`, `dict`, `namespace`, ...) are known names.
    pub fn compile(source: &str) -> Result<Self, String> {
        if source.len() > MAX_TEMPLATE {
            return Err(format!("template is {} bytes long; the limit is {MAX_TEMPLATE}", source.len()));
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_fuel(Some(FUEL));
        env.add_template_owned(TEMPLATE_NAME, source.to_string()).map_err(describe)?;
        let template = env.get_template(TEMPLATE_NAME).map_err(describe)?;
        let globals: Vec<&str> = env.globals().map(|(name, _)| name).collect();
        let mut unknown: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|name| !CONTEXT_NAMES.contains(&name.as_str()) && !globals.contains(&name.as_str()))
            .collect();
        let uses_old_object = template.undeclared_variables(false).contains("oldObject");
        if !unknown.is_empty() {
            unknown.sort();
            return Err(format!(
                "unknown variable(s) {} in template; available: {}",
                unknown.join(", "),
                CONTEXT_NAMES.join(", ")
            ));
        }
        Ok(Template { env: Arc::new(env), uses_old_object })
    }

    /// Renders against `scope`; fails when the rendering runs out of fuel or its output would
    /// pass [`MAX_OUTPUT`].
    pub fn render(&self, scope: &TemplateScope) -> Result<String, String> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(describe)?;
        let mut out = BoundedOutput { text: Vec::new(), overflowed: false };
        template.render_captured_to(&scope.0, &mut out).map_err(|error| {
            if out.overflowed {
                format!("rendered text exceeds the limit of {MAX_OUTPUT} bytes")
            } else {
                describe(error)
            }
        })?;
        String::from_utf8(out.text).map_err(|_| "rendered text is not UTF-8".to_owned())
    }

    /// Whether the template reads `oldObject` (so the engine must keep old copies).
    pub fn uses_old_object(&self) -> bool {
        self.uses_old_object
    }
}

/// Collects rendered text and refuses to grow past [`MAX_OUTPUT`].
struct BoundedOutput {
    text: Vec<u8>,
    overflowed: bool,
}

impl io::Write for BoundedOutput {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.text.len().saturating_add(bytes.len()) > MAX_OUTPUT {
            self.overflowed = true;
            return Err(io::Error::other("output limit"));
        }
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn describe(error: minijinja::Error) -> String {
    if error.kind() == minijinja::ErrorKind::OutOfFuel {
        return format!("template ran more than {FUEL} instructions (a loop too long?)");
    }
    match error.line() {
        Some(line) => format!("{} (template line {line})", error.detail().unwrap_or(&error.kind().to_string())),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_context_names() {
        let template =
            Template::compile("{{ event.type }} {{ object.metadata.name }} n={{ object.count + 1 }}").unwrap();
        let event = Event::new("cron", "fire", json!({"metadata": {"name": "web"}, "count": 2}));
        assert_eq!(template.render(&TemplateScope::new(&event, "t")).unwrap(), "fire web n=3");
    }

    #[test]
    fn unknown_variables_fail_at_load() {
        let err = Template::compile("Pod {{ pod.name }} in {{ object.ns }}").unwrap_err();
        assert!(err.contains("unknown variable(s) pod"), "{err}");
    }

    #[test]
    fn minijinja_globals_such_as_range_work() {
        let template = Template::compile("{% for i in range(3) %}{{ i }}{% endfor %}").unwrap();
        let event = Event::new("cron", "fire", json!({}));
        assert_eq!(template.render(&TemplateScope::new(&event, "t")).unwrap(), "012");
    }

    #[test]
    fn a_runaway_loop_runs_out_of_fuel() {
        let template =
            Template::compile("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}")
                .unwrap();
        let event = Event::new("cron", "fire", json!({}));
        let err = template.render(&TemplateScope::new(&event, "t")).unwrap_err();
        assert!(err.contains("ran more than 100000 instructions"), "{err}");
    }

    #[test]
    fn output_past_the_limit_is_an_error() {
        let template = Template::compile("{{ 'x' * 2000000 }}").unwrap();
        let event = Event::new("cron", "fire", json!({}));
        let err = template.render(&TemplateScope::new(&event, "t")).unwrap_err();
        assert!(err.contains("exceeds the limit of 1048576 bytes"), "{err}");
    }

    #[test]
    fn templates_longer_than_the_limit_are_refused() {
        let err = Template::compile(&"x".repeat(MAX_TEMPLATE + 1)).unwrap_err();
        assert!(err.contains("the limit is 65536"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = Template::compile("a\n{{ object. }}").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }
}
