//! Text templates (prompts, bodies, messages): minijinja over the event context, bounded: a
//! template is at most [`MAX_TEMPLATE`] bytes, one rendering runs at most [`FUEL`] instructions
//! (loops included) and produces at most [`MAX_OUTPUT`] bytes.
//!
//! Triggers with the same template text share one compiled template: a compiled template takes
//! about 12 KiB however short its text, and a thousand triggers often render the same message.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, LazyLock, Mutex, Weak};

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
pub struct Template(Arc<Compiled>);

/// A compiled template and what it reads.
struct Compiled {
    env: Environment<'static>,
    uses_old_object: bool,
}

/// The compiled templates in use, by source text. An entry lives as long as a [`Template`]
/// holds it; the entries of dropped ones are swept out as new ones come.
static COMPILED: LazyLock<Mutex<SharedTemplates>> = LazyLock::new(Default::default);

/// The map behind [`COMPILED`], and the size at which it is next swept.
#[derive(Default)]
struct SharedTemplates {
    by_source: HashMap<String, Weak<Compiled>>,
    sweep_at: usize,
}

impl SharedTemplates {
    /// The compiled template of `source` still in use, if any.
    fn get(&self, source: &str) -> Option<Arc<Compiled>> {
        self.by_source.get(source).and_then(Weak::upgrade)
    }

    /// Shares `compiled` as the template of `source`. Dropped templates are swept whenever the
    /// map doubled since the last sweep, so it holds at most about twice the templates in use.
    fn insert(&mut self, source: &str, compiled: &Arc<Compiled>) {
        if self.by_source.len() >= self.sweep_at {
            self.by_source.retain(|_, compiled| compiled.strong_count() > 0);
            self.sweep_at = self.by_source.len().saturating_mul(2).max(64);
        }
        self.by_source.insert(source.to_owned(), Arc::downgrade(compiled));
    }
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
        if let Some(shared) = crate::sync::lock(&COMPILED).get(source) {
            return Ok(Template(shared));
        }
        let compiled = Arc::new(Self::compile_new(source)?);
        crate::sync::lock(&COMPILED).insert(source, &compiled);
        Ok(Template(compiled))
    }

    /// Compiles and checks `source` into a template of its own.
    fn compile_new(source: &str) -> Result<Compiled, String> {
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
        Ok(Compiled { env, uses_old_object })
    }

    /// Renders against `scope`; fails when the rendering runs out of fuel or its output would
    /// pass [`MAX_OUTPUT`].
    pub fn render(&self, scope: &TemplateScope) -> Result<String, String> {
        let template = self.0.env.get_template(TEMPLATE_NAME).map_err(describe)?;
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
        self.0.uses_old_object
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
    fn the_same_text_shares_one_compiled_template_while_in_use() {
        let source = "{{ object.metadata.name }} shared by the sharing test";
        let first = Template::compile(source).unwrap();
        let second = Template::compile(source).unwrap();
        assert!(Arc::ptr_eq(&first.0, &second.0));
        let other = Template::compile("{{ object.metadata.name }} another text").unwrap();
        assert!(!Arc::ptr_eq(&first.0, &other.0));
        let event = Event::new("cron", "fire", json!({"metadata": {"name": "web"}}));
        assert_eq!(second.render(&TemplateScope::new(&event, "t")).unwrap(), "web shared by the sharing test");
        let weak = Arc::downgrade(&first.0);
        drop((first, second));
        assert!(weak.upgrade().is_none(), "a template no trigger holds is freed");
    }

    #[test]
    fn dropped_templates_are_swept_from_the_shared_map() {
        let mut shared = SharedTemplates::default();
        for i in 0..1000 {
            let compiled = Arc::new(Template::compile_new(&format!("{{{{ event.type }}}} {i}")).unwrap());
            shared.insert(&format!("{i}"), &compiled);
        }
        assert!(shared.by_source.len() <= 128, "{} entries kept for no template in use", shared.by_source.len());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = Template::compile("a\n{{ object. }}").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }
}
