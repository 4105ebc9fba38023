//! The parts of a CRD's structural schema the test cluster enforces, as the API server does on
//! every create, update and patch of the CRD's resources (status writes included):
//!
//! * `null` in a field that is not `nullable` is dropped before anything else looks at the object;
//! * `x-kubernetes-validations` rules are evaluated with the project's CEL engine (`self`, and
//!   `oldSelf` for transition rules on updates) and refused like the API server refuses them: 422
//!   Invalid, one cause per broken rule, with the rule's `message` (or `messageExpression`),
//!   `reason` and `fieldPath`;
//! * on updates, rules other than transition rules are not checked again where the value did not
//!   change (validation ratcheting, on by default since Kubernetes 1.30).
//!
//! Rules are compiled when the CRD is stored: one that does not parse, or that reads a variable
//! other than `self` and `oldSelf`, makes the CRD invalid. Not enforced: the OpenAPI keywords
//! (`maxItems`, `pattern`, `minimum`, ...), types, cost limits, and functions of Kubernetes' CEL
//! library that the engine lacks (a rule calling one fails to evaluate, which refuses the object).
//! List items are not correlated with the old object: transition rules inside lists are not
//! evaluated and ratcheting stops at lists. `optionalOldSelf` is not supported (the CRD is refused).

use std::collections::BTreeMap;

use ktrigger_core::{CelExpr, Vars};
use serde_json::Value;

use crate::status::FieldError;

/// The variables a CRD rule may read.
const RULE_NAMES: [&str; 2] = ["self", "oldSelf"];

/// One `x-kubernetes-validations` rule, compiled.
#[derive(Debug)]
struct Rule {
    source: String,
    expr: CelExpr,
    message: Option<String>,
    message_expression: Option<CelExpr>,
    field_path: String,
    reason: String,
    /// Reads `oldSelf`: evaluated only on updates, against the previous value.
    transition: bool,
}

impl Rule {
    fn compile(rule: &Value, at: &str) -> Result<Rule, FieldError> {
        let text = |key: &str| rule.get(key).and_then(Value::as_str).map(str::to_string);
        let source = text("rule").ok_or_else(|| FieldError::required(&format!("{at}.rule"), ""))?;
        if rule.get("optionalOldSelf") == Some(&Value::Bool(true)) {
            return Err(FieldError::invalid(
                &format!("{at}.optionalOldSelf"),
                "true",
                "optionalOldSelf is not supported by the test cluster",
            ));
        }
        let compile = |field: &str, source: &str| {
            CelExpr::compile(source, &RULE_NAMES).map_err(|error| {
                FieldError::invalid(&format!("{at}.{field}"), source, &format!("compilation failed: {error}"))
            })
        };
        let expr = compile("rule", &source)?;
        let message_expression = text("messageExpression").map(|m| compile("messageExpression", &m)).transpose()?;
        let field_path = match text("fieldPath") {
            Some(path) if !path.starts_with(['.', '[']) => format!(".{path}"),
            Some(path) => path,
            None => String::new(),
        };
        Ok(Rule {
            transition: expr.references().iter().any(|name| name == "oldSelf"),
            source,
            expr,
            message: text("message").map(|m| m.trim().to_string()).filter(|m| !m.is_empty()),
            message_expression,
            field_path,
            reason: text("reason").unwrap_or_default(),
        })
    }

    /// What is wrong when the rule does not hold: its message expression's result when that is
    /// a usable message, else its message, else the rule itself.
    fn detail(&self, vars: &Vars) -> String {
        let computed = self.message_expression.as_ref().and_then(|m| m.eval_string(vars).ok());
        if let Some(message) = computed.filter(|m| !m.trim().is_empty() && !m.contains('\n')) {
            return message;
        }
        match &self.message {
            Some(message) => message.clone(),
            None => format!("failed rule: {}", self.source.trim()),
        }
    }

    /// The field error for a value of schema type `type_name` at `path` that breaks the rule.
    fn failure(&self, path: &str, type_name: &str, vars: &Vars) -> FieldError {
        let path = match (path, self.field_path.strip_prefix('.')) {
            ("", Some(relative)) => relative.to_string(),
            _ => format!("{path}{}", self.field_path),
        };
        let detail = self.detail(vars);
        match self.reason.as_str() {
            "FieldValueRequired" => FieldError::required(&path, &detail),
            "FieldValueForbidden" => FieldError::forbidden(&path, &detail),
            // The API server reports only the value for duplicates, not the message.
            "FieldValueDuplicate" => FieldError::duplicate(&path, type_name),
            _ => FieldError::invalid(&path, type_name, &detail),
        }
    }
}

/// A schema node: its type, whether it may hold `null`, its rules and its children.
#[derive(Debug, Default)]
struct Node {
    type_name: String,
    nullable: bool,
    rules: Vec<Rule>,
    properties: BTreeMap<String, Node>,
    items: Option<Box<Node>>,
    additional: Option<Box<Node>>,
}

impl Node {
    fn compile(schema: &Value, at: &str, errors: &mut Vec<FieldError>) -> Node {
        let mut node = Node {
            type_name: schema.get("type").and_then(Value::as_str).unwrap_or_default().to_string(),
            nullable: schema.get("nullable") == Some(&Value::Bool(true)),
            ..Node::default()
        };
        let rules = schema.get("x-kubernetes-validations").and_then(Value::as_array);
        for (index, rule) in rules.into_iter().flatten().enumerate() {
            match Rule::compile(rule, &format!("{at}.x-kubernetes-validations[{index}]")) {
                Ok(rule) => node.rules.push(rule),
                Err(error) => errors.push(error),
            }
        }
        for (name, child) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
            node.properties.insert(name.clone(), Node::compile(child, &format!("{at}.properties[{name}]"), errors));
        }
        if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
            node.items = Some(Box::new(Node::compile(items, &format!("{at}.items"), errors)));
        }
        if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            node.additional = Some(Box::new(Node::compile(additional, &format!("{at}.additionalProperties"), errors)));
        }
        node
    }

    /// The schema of the field `name` of an object of this node.
    fn field(&self, name: &str) -> Option<&Node> {
        self.properties.get(name).or(self.additional.as_deref())
    }

    /// Drops, all the way down, fields holding `null` whose schema is not `nullable`.
    fn prune_nulls(&self, value: &mut Value) {
        match value {
            Value::Object(fields) => {
                fields.retain(|name, v| !v.is_null() || self.field(name).is_none_or(|node| node.nullable));
                for (name, v) in fields.iter_mut() {
                    if let Some(node) = self.field(name) {
                        node.prune_nulls(v);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(node) = &self.items {
                    items.iter_mut().for_each(|item| node.prune_nulls(item));
                }
            }
            _ => {}
        }
    }

    /// Checks the rules of this node and below on `value` at `path`; `old` is the value at the
    /// same place before an update, when there is one.
    fn check(&self, value: &Value, old: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) {
        if value.is_null() {
            return;
        }
        let unchanged = old == Some(value);
        for rule in &self.rules {
            let vars = match old {
                Some(old) if rule.transition => Vars::from_json(&[("self", value), ("oldSelf", old)]),
                _ if rule.transition || unchanged => continue,
                _ => Vars::from_json(&[("self", value)]),
            };
            match rule.expr.eval_bool(&vars) {
                Ok(true) => {}
                Ok(false) => errors.push(rule.failure(path, &self.type_name, &vars)),
                Err(error) => errors.push(FieldError::invalid(
                    path,
                    &self.type_name,
                    &format!("{error} evaluating rule: {}", rule.source.trim()),
                )),
            }
        }
        match value {
            Value::Object(fields) => {
                for (name, field) in fields {
                    let Some(node) = self.field(name) else { continue };
                    let at = if self.properties.contains_key(name) {
                        if path.is_empty() { name.clone() } else { format!("{path}.{name}") }
                    } else {
                        format!("{path}[{name}]")
                    };
                    node.check(field, old.and_then(|o| o.get(name)), &at, errors);
                }
            }
            Value::Array(items) => {
                if let Some(node) = &self.items {
                    for (index, item) in items.iter().enumerate() {
                        node.check(item, None, &format!("{path}[{index}]"), errors);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The enforced schema of one served version of a custom resource.
#[derive(Debug)]
pub(crate) struct Schema {
    /// The schema as written in the CRD.
    source: Value,
    root: Node,
}

impl PartialEq for Schema {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Schema {
    /// Compiles the `openAPIV3Schema` found at `at` of a CRD; the errors name the rules that do
    /// not compile.
    pub fn compile(schema: &Value, at: &str) -> Result<Schema, Vec<FieldError>> {
        let mut errors = Vec::new();
        let root = Node::compile(schema, at, &mut errors);
        if errors.is_empty() { Ok(Schema { source: schema.clone(), root }) } else { Err(errors) }
    }

    /// Prepares an object for storage as the API server does, and checks it: `null`s the schema
    /// does not allow are dropped, then every rule is checked (against `old` on updates).
    pub fn admit(&self, object: &mut Value, old: Option<&Value>) -> Result<(), Vec<FieldError>> {
        self.root.prune_nulls(object);
        let mut errors = Vec::new();
        self.root.check(object, old, "", &mut errors);
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}
