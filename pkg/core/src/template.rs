//! Text templates (prompts, bodies, messages): minijinja over the event context.

use std::sync::Arc;

use chrono::Utc;
use minijinja::{Environment, UndefinedBehavior};

use crate::event::{CONTEXT_NAMES, Event};

const TEMPLATE_NAME: &str = "template";

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
    /// Parses `source`; an unknown variable or a syntax error is an error with its line.
    pub fn compile(source: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.add_template_owned(TEMPLATE_NAME, source.to_string()).map_err(describe)?;
        let template = env.get_template(TEMPLATE_NAME).map_err(describe)?;
        let mut unknown: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|name| !CONTEXT_NAMES.contains(&name.as_str()))
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

    /// Renders against `scope`.
    pub fn render(&self, scope: &TemplateScope) -> Result<String, String> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(describe)?;
        template.render(&scope.0).map_err(describe)
    }

    /// Whether the template reads `oldObject` (so the engine must keep old copies).
    pub fn uses_old_object(&self) -> bool {
        self.uses_old_object
    }
}

fn describe(error: minijinja::Error) -> String {
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
    fn syntax_errors_name_the_line() {
        let err = Template::compile("a\n{{ object. }}").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }
}
