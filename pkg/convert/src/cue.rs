//! kube-trigger CUE filters translated into CEL.
//!
//! kube-trigger evaluates a filter as CUE over `context`. The forms its docs and examples use are
//! translated: boolean expressions (`context.data.status.readyReplicas == context.data.status.replicas`,
//! with `=~`/`!~` regular-expression matches), struct constraints
//! (`context: data: metadata: name: =~"web-.*"`, nested with `{...}`), comparisons (`>3`),
//! disjunctions (`"a" | "b"`), conjunctions (`>1 & <5`), and `if`-guarded blocks. Anything else is
//! refused with its position, so that a filter is never passed silently.
//!
//! The input is bounded in length ([`ktrigger_api::MAX_EXPRESSION`]) and nesting ([`MAX_DEPTH`]);
//! every loop consumes a token, so the work is linear in the input.

use std::fmt::Write;

use ktrigger_api::MAX_EXPRESSION;

/// Deepest nesting of braces and parentheses accepted.
pub const MAX_DEPTH: usize = 32;

/// A translated filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    /// The CEL expression.
    pub cel: String,
    /// Where the meaning differs from what kube-trigger did with the same text.
    pub notes: Vec<String>,
}

/// What kube-trigger did with a struct-shaped filter, said wherever one is translated.
pub const STRUCT_FILTER_NOTE: &str = "kube-trigger let every event through this struct-shaped filter (it never \
     unifies against the event, so it never rejects one); the CEL filter keeps only the events it describes";

/// Translates one kube-trigger filter into CEL, or says why it cannot: the position and the CUE
/// text that is not translated.
pub fn translate(cue: &str) -> Result<Translation, String> {
    if cue.len() > MAX_EXPRESSION {
        return Err(format!("the filter is longer than {MAX_EXPRESSION} bytes"));
    }
    let tokens = tokenize(cue)?;
    let mut parser = Parser { tokens, position: 0, depth: 0 };
    let struct_form = parser.starts_declaration();
    let cel = if struct_form {
        let constraints = parser.declarations(&[], None)?;
        if constraints.is_empty() {
            return Err("the filter constrains nothing under `context`".into());
        }
        and_all(&constraints)
    } else {
        let expression = parser.expression()?;
        parser.skip_newlines();
        expression
    };
    if let Some(token) = parser.peek() {
        return Err(format!("{}: unexpected {}", token.at, token.kind.describe()));
    }
    let notes = if struct_form { vec![STRUCT_FILTER_NOTE.to_string()] } else { Vec::new() };
    Ok(Translation { cel, notes })
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Ident(String),
    Str(String),
    Number(String),
    Punct(&'static str),
    Newline,
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::Ident(name) => format!("`{name}`"),
            Kind::Str(text) => format!("string {text:?}"),
            Kind::Number(number) => format!("number {number}"),
            Kind::Punct(punct) => format!("`{punct}`"),
            Kind::Newline => "end of line".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    at: Position,
}

#[derive(Debug, Clone, Copy)]
struct Position {
    line: usize,
    column: usize,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Longest punctuation first, so that `<=` is not read as `<` `=`.
const PUNCTS: [&str; 21] =
    ["==", "!=", "=~", "!~", "<=", ">=", "&&", "||", "<", ">", "!", "&", "|", ":", ",", ".", "{", "}", "(", ")", "="];

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut line_start = 0;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let offset = text.len() - rest.len();
        let at = Position { line, column: text[line_start..offset].chars().count() + 1 };
        if c == '\n' {
            tokens.push(Token { kind: Kind::Newline, at });
            line += 1;
            line_start = offset + 1;
            rest = &rest[1..];
        } else if c.is_whitespace() {
            rest = &rest[c.len_utf8()..];
        } else if rest.starts_with("//") {
            rest = &rest[rest.find('\n').unwrap_or(rest.len())..];
        } else if c == '"' {
            let (value, used) = string(rest).ok_or_else(|| format!("{at}: unterminated or multi-line string"))?;
            tokens.push(Token { kind: Kind::Str(value), at });
            rest = &rest[used..];
        } else if c.is_ascii_digit() || (c == '-' && rest[1..].starts_with(|d: char| d.is_ascii_digit())) {
            let end = 1 + rest[1..].find(|d: char| !(d.is_ascii_digit() || d == '.')).unwrap_or(rest.len() - 1);
            let number = &rest[..end];
            if number.matches('.').count() > 1 || number.ends_with('.') {
                return Err(format!("{at}: {number:?} is not a number"));
            }
            tokens.push(Token { kind: Kind::Number(number.to_string()), at });
            rest = &rest[end..];
        } else if c.is_alphabetic() || c == '_' || c == '#' || c == '$' {
            let end = rest.find(|d: char| !(d.is_alphanumeric() || matches!(d, '_' | '#' | '$'))).unwrap_or(rest.len());
            tokens.push(Token { kind: Kind::Ident(rest[..end].to_string()), at });
            rest = &rest[end..];
        } else if let Some(punct) = PUNCTS.iter().find(|p| rest.starts_with(**p)) {
            tokens.push(Token { kind: Kind::Punct(punct), at });
            rest = &rest[punct.len()..];
        } else {
            return Err(format!("{at}: unexpected character {c:?}"));
        }
    }
    Ok(tokens)
}

/// A double-quoted CUE string at the start of `text`: its value and the bytes it used.
fn string(text: &str) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Some((value, index + 1)),
            '\n' => return None,
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                '"' => value.push('"'),
                '\\' => value.push('\\'),
                '/' => value.push('/'),
                // Kept as written so that regular-expression escapes (`\.`, `\d`) survive.
                other => {
                    value.push('\\');
                    value.push(other);
                }
            },
            c => value.push(c),
        }
    }
    None
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
    depth: usize,
}

/// Comparison operators, in CUE and CEL alike.
const COMPARISONS: [&str; 6] = ["==", "!=", "<", "<=", ">", ">="];

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn peek_kind(&self) -> Option<&Kind> {
        self.peek().map(|t| &t.kind)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += usize::from(token.is_some());
        token
    }

    fn is_punct(&self, punct: &str) -> bool {
        matches!(self.peek_kind(), Some(Kind::Punct(p)) if *p == punct)
    }

    fn expect(&mut self, punct: &str) -> Result<(), String> {
        match self.next() {
            Some(Token { kind: Kind::Punct(p), .. }) if p == punct => Ok(()),
            Some(token) => Err(format!("{}: expected `{punct}`, found {}", token.at, token.kind.describe())),
            None => Err(format!("expected `{punct}` at the end of the filter")),
        }
    }

    fn skip_newlines(&mut self) {
        while matches!(self.peek_kind(), Some(Kind::Newline)) {
            self.position += 1;
        }
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("the filter nests deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    /// Whether the text starts with a field (`label:`) or an `if` guard: the struct form.
    fn starts_declaration(&mut self) -> bool {
        self.skip_newlines();
        let label = matches!(self.peek_kind(), Some(Kind::Ident(_) | Kind::Str(_)));
        let colon = matches!(self.tokens.get(self.position + 1).map(|t| &t.kind), Some(Kind::Punct(":")));
        let guard = matches!(self.peek_kind(), Some(Kind::Ident(word)) if word == "if");
        (label && colon) || guard || self.is_punct("{")
    }

    /// Declarations up to `close` (or the end), each a constraint on `path`.
    fn declarations(&mut self, path: &[String], close: Option<&str>) -> Result<Vec<String>, String> {
        self.enter()?;
        let mut constraints = Vec::new();
        let mut guards = Vec::new();
        loop {
            while matches!(self.peek_kind(), Some(Kind::Newline | Kind::Punct(","))) {
                self.position += 1;
            }
            match (self.peek_kind(), close) {
                (None, None) => break,
                (None, Some(close)) => return Err(format!("missing `{close}` at the end of the filter")),
                (Some(Kind::Punct(p)), Some(close)) if *p == close => {
                    self.position += 1;
                    break;
                }
                _ => {}
            }
            if path.is_empty() && self.is_punct("{") {
                self.position += 1;
                constraints.extend(self.declarations(path, Some("}"))?);
                continue;
            }
            if matches!(self.peek_kind(), Some(Kind::Ident(word)) if word == "if") {
                self.position += 1;
                let condition = self.expression()?;
                self.expect("{")?;
                let body = self.declarations(path, Some("}"))?;
                let mut all = vec![condition];
                all.extend(body);
                guards.push(and_all(&all));
                continue;
            }
            constraints.extend(self.field(path)?);
        }
        self.depth -= 1;
        if !guards.is_empty() {
            constraints.push(or_all(&guards));
        }
        Ok(constraints)
    }

    /// `label: value`, with `label: label: value` shorthand: the constraints it puts on `path.label`.
    fn field(&mut self, path: &[String]) -> Result<Vec<String>, String> {
        let token = self.next().ok_or("expected a field")?;
        let label = match token.kind {
            Kind::Ident(name) | Kind::Str(name) => name,
            other => return Err(format!("{}: expected a field name, found {}", token.at, other.describe())),
        };
        if path.is_empty() && label != "context" {
            return Err(format!(
                "{}: field `{label}` is not under `context`; kube-trigger filters see only `context`",
                token.at
            ));
        }
        self.expect(":")?;
        let mut nested = path.to_vec();
        nested.push(label);
        self.value(&nested)
    }

    /// What follows `label:`: a nested field, a struct, or a constraint on the field.
    fn value(&mut self, path: &[String]) -> Result<Vec<String>, String> {
        let label = matches!(self.peek_kind(), Some(Kind::Ident(_) | Kind::Str(_)));
        let colon = matches!(self.tokens.get(self.position + 1).map(|t| &t.kind), Some(Kind::Punct(":")));
        if label && colon {
            return self.field(path);
        }
        if self.is_punct("{") {
            self.position += 1;
            return self.declarations(path, Some("}"));
        }
        let constraint = self.disjunction(&cel_path(path))?;
        Ok(constraint.into_iter().collect())
    }

    /// `a | b | ...`; `None` when the constraint is `_` (anything).
    fn disjunction(&mut self, subject: &str) -> Result<Option<String>, String> {
        self.enter()?;
        let mut parts = vec![self.conjunction(subject)?];
        while self.is_punct("|") {
            self.position += 1;
            parts.push(self.conjunction(subject)?);
        }
        self.depth -= 1;
        if parts.iter().any(Option::is_none) {
            return Ok(None);
        }
        let parts: Vec<String> = parts.into_iter().flatten().collect();
        Ok(Some(or_all(&parts)))
    }

    /// `a & b & ...`.
    fn conjunction(&mut self, subject: &str) -> Result<Option<String>, String> {
        let mut parts = Vec::new();
        parts.extend(self.unary_constraint(subject)?);
        while self.is_punct("&") {
            self.position += 1;
            parts.extend(self.unary_constraint(subject)?);
        }
        Ok(if parts.is_empty() { None } else { Some(and_all(&parts)) })
    }

    /// One constraint on `subject`: `"x"`, `=~"re"`, `>3`, `(...)`, or `_`.
    fn unary_constraint(&mut self, subject: &str) -> Result<Option<String>, String> {
        let token = self.next().ok_or_else(|| format!("expected a value for {subject} at the end of the filter"))?;
        Ok(Some(match &token.kind {
            Kind::Punct("(") => {
                let inner = self.disjunction(subject)?;
                self.expect(")")?;
                return Ok(inner);
            }
            Kind::Punct(op @ ("=~" | "!~")) => {
                let pattern = self.literal()?;
                let matches = format!("{subject}.matches({pattern})");
                if *op == "=~" { matches } else { format!("!{matches}") }
            }
            Kind::Punct(op) if COMPARISONS.contains(op) => format!("{subject} {op} {}", self.literal()?),
            Kind::Ident(word) if word == "_" => return Ok(None),
            Kind::Ident(word) if matches!(word.as_str(), "string" | "int" | "bool" | "bytes") => {
                format!("type({subject}) == {word}")
            }
            Kind::Ident(word) if word == "number" => {
                format!("(type({subject}) == int || type({subject}) == uint || type({subject}) == double)")
            }
            _ => {
                self.position -= 1;
                format!("{subject} == {}", self.literal()?)
            }
        }))
    }

    /// A string, number, `true`, `false` or `null`, written as CEL.
    fn literal(&mut self) -> Result<String, String> {
        let token = self.next().ok_or("expected a value at the end of the filter")?;
        match token.kind {
            Kind::Str(text) => Ok(cel_string(&text)),
            Kind::Number(number) => Ok(number),
            Kind::Ident(word) if matches!(word.as_str(), "true" | "false" | "null") => Ok(word),
            other => Err(format!("{}: {} is not a value this translation knows", token.at, other.describe())),
        }
    }

    /// A boolean expression: `||` of `&&` of comparisons, `!` and parentheses.
    fn expression(&mut self) -> Result<String, String> {
        self.enter()?;
        let mut parts = vec![self.and_expression()?];
        while self.is_punct("||") {
            self.position += 1;
            parts.push(self.and_expression()?);
        }
        self.depth -= 1;
        Ok(parts.join(" || "))
    }

    fn and_expression(&mut self) -> Result<String, String> {
        let mut parts = vec![self.comparison()?];
        while self.is_punct("&&") {
            self.position += 1;
            parts.push(self.comparison()?);
        }
        Ok(parts.join(" && "))
    }

    fn comparison(&mut self) -> Result<String, String> {
        if self.is_punct("!") {
            self.position += 1;
            return Ok(format!("!{}", self.operand()?));
        }
        let left = self.operand()?;
        let op = match self.peek_kind() {
            Some(Kind::Punct(op)) if COMPARISONS.contains(op) || *op == "=~" || *op == "!~" => *op,
            _ => return Ok(left),
        };
        self.position += 1;
        let right = self.operand()?;
        Ok(match op {
            "=~" => format!("{left}.matches({right})"),
            "!~" => format!("!{left}.matches({right})"),
            op => format!("{left} {op} {right}"),
        })
    }

    /// A path under `context`, a literal or a parenthesized expression.
    fn operand(&mut self) -> Result<String, String> {
        if self.is_punct("(") {
            self.position += 1;
            let inner = self.expression()?;
            self.expect(")")?;
            return Ok(format!("({inner})"));
        }
        let Some(token) = self.peek().cloned() else { return Err("expected a value at the end of the filter".into()) };
        match &token.kind {
            Kind::Ident(word) if !matches!(word.as_str(), "true" | "false" | "null") => {
                self.position += 1;
                if word != "context" {
                    return Err(format!(
                        "{}: `{word}` is not `context` or a value; kube-trigger filters see only `context`",
                        token.at
                    ));
                }
                let mut path = vec![word.clone()];
                while self.is_punct(".") {
                    self.position += 1;
                    match self.next() {
                        Some(Token { kind: Kind::Ident(name) | Kind::Str(name), .. }) => path.push(name),
                        Some(other) => {
                            return Err(format!(
                                "{}: expected a field name after `.`, found {}",
                                other.at,
                                other.kind.describe()
                            ));
                        }
                        None => return Err("expected a field name after `.` at the end of the filter".into()),
                    }
                }
                if self.is_punct("(") {
                    return Err(format!("{}: function calls are not translated", token.at));
                }
                Ok(cel_path(&path))
            }
            _ => self.literal(),
        }
    }
}

/// `context.data["app.kubernetes.io/name"]`: identifiers as fields, other labels indexed.
fn cel_path(path: &[String]) -> String {
    let mut out = String::new();
    for (index, label) in path.iter().enumerate() {
        let identifier = label.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if index == 0 {
            out.push_str(label);
        } else if identifier {
            let _ = write!(out, ".{label}");
        } else {
            let _ = write!(out, "[{}]", cel_string(label));
        }
    }
    out
}

/// A CEL string literal holding `text`; JSON's escapes are CEL's.
fn cel_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

fn and_all(parts: &[String]) -> String {
    if parts.len() == 1 {
        return parts[0].clone();
    }
    let wrapped: Vec<String> = parts.iter().map(|p| parenthesize_if(p, " || ")).collect();
    wrapped.join(" && ")
}

fn or_all(parts: &[String]) -> String {
    if parts.len() == 1 {
        return parts[0].clone();
    }
    let wrapped: Vec<String> = parts.iter().map(|p| parenthesize_if(p, " && ")).collect();
    wrapped.join(" || ")
}

/// `part` in parentheses when it holds `op` anywhere: more parentheses than needed at worst.
fn parenthesize_if(part: &str, op: &str) -> String {
    if part.contains(op) { format!("({part})") } else { part.to_string() }
}
