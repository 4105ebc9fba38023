//! CEL expressions: compiled once when a trigger is loaded, evaluated per event against variables
//! bound lazily over the parsed JSON (DESIGN.md section 3).
//!
//! Compiling checks what the `cel` crate does not: every variable an expression refers to must be
//! one of the names it is compiled for, so `pod.name` is rejected when the trigger loads rather
//! than failing on every event. Evaluating never converts a whole object into CEL values: the
//! object, `event` and `context` are views that read the JSON and the event metadata on access.
//! Expressions of the common shapes are evaluated directly on those views ([`fast`]); the others,
//! and every evaluation that meets an error, by the `cel` interpreter.
//! An evaluation error, or a filter that does not return a bool, is an `Err` with its reason,
//! never a silent pass.

mod fast;
pub mod limits;
mod metered;
mod value;

#[cfg(test)]
mod fast_tests;
#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::Instant;

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue, SourceInfo, operators};
use cel::common::functions::Function;
use cel::common::types::{CelBool, CelNull, CelString, CelTimestamp, DYN_TYPE};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, ParseErrors};
use chrono::{DateTime, Utc};
use regex::Regex;
use serde_json::Value;

use crate::event::{CONTEXT_NAMES, Event};
use limits::Budget;
use value::{Bound, Record};

/// The environment every expression is compiled and run with: the standard library, the
/// strings, lists, math and base64 extensions, and [`MATCHES`].
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    for extension in
        [cel::extensions::strings, cel::extensions::lists, cel::extensions::math, cel::extensions::encoders]
    {
        env.add_extension(extension).expect("the CEL extensions declare distinct functions");
    }
    env.add_overload(MATCHES, "ktrigger_matches_dyn_dyn", vec![DYN_TYPE, DYN_TYPE], cached_matches)
        .expect("no other function has this name");
    for (_, name, op) in FAST_OPERATORS {
        let arity = if name == "@not" { 1 } else { 2 };
        env.add_overload(name, &format!("ktrigger_{}", &name[1..]), (0..arity).map(|_| DYN_TYPE).collect(), op)
            .expect("no other function has this name");
    }
    let metered: [(&str, usize, Function); 6] = [
        (metered::LOOP, 2, metered::charge_loop),
        (metered::LISTS_RANGE, 1, metered::lists_range),
        (metered::REPLACE, 3, metered::replace),
        (metered::REPLACE, 4, metered::replace),
        (metered::DISTINCT, 1, metered::distinct),
        (metered::ADD, 2, metered::add),
    ];
    for (name, arity, op) in metered {
        env.add_overload(name, &format!("ktrigger_{}_{arity}", &name[1..]), (0..arity).map(|_| DYN_TYPE).collect(), op)
            .expect("no other function has this name");
    }
    Arc::new(env)
});

/// What `matches` calls are compiled to. The standard `matches` compiles its regular expression
/// on every call (tens of microseconds); this one keeps compiled expressions in [`REGEXES`].
/// Source text cannot name it (`@` starts no identifier).
const MATCHES: &str = "@matches";

/// Most regular expressions kept compiled; the cache starts over when it is full.
const MAX_REGEXES: usize = 1024;

/// Compiled regular expressions by pattern, shared by all expressions.
static REGEXES: LazyLock<RwLock<HashMap<String, Arc<Regex>>>> = LazyLock::new(Default::default);

/// The compiled form of `pattern`, from the cache when it was seen before.
fn regex(pattern: &str) -> Result<Arc<Regex>, regex::Error> {
    if let Some(found) = REGEXES.read().unwrap_or_else(PoisonError::into_inner).get(pattern) {
        return Ok(Arc::clone(found));
    }
    let compiled = Arc::new(Regex::new(pattern)?);
    let mut cache = REGEXES.write().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= MAX_REGEXES {
        cache.clear();
    }
    cache.insert(pattern.to_owned(), Arc::clone(&compiled));
    Ok(compiled)
}

/// `text.matches(pattern)` and `matches(text, pattern)`, with the pattern compiled once.
fn cached_matches<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let strings = match args.as_slice() {
        [text, pattern] => text.downcast_ref::<CelString>().zip(pattern.downcast_ref::<CelString>()),
        _ => None,
    };
    let Some((text, pattern)) = strings else {
        let types = args.iter().map(|arg| arg.get_type().name().to_owned()).collect();
        return Err(ExecutionError::no_such_member_overload("matches", types));
    };
    let regex = regex(pattern.inner()).map_err(|error| {
        ExecutionError::function_error("matches", format!("'{}' is not a valid regex: {error}", pattern.inner()))
    })?;
    Ok(boolean(regex.is_match(text.inner())))
}

/// Operators the interpreter evaluates by first describing the error they would raise, which
/// allocates on every comparison even when it succeeds. Expressions call these equivalents
/// instead (operator, function, implementation); they describe an error only when there is one.
const FAST_OPERATORS: [(&str, &str, Function); 5] = [
    (operators::LESS, "@lt", compare::<{ Ordering::Less as i8 }, false>),
    (operators::LESS_EQUALS, "@le", compare::<{ Ordering::Greater as i8 }, true>),
    (operators::GREATER, "@gt", compare::<{ Ordering::Greater as i8 }, false>),
    (operators::GREATER_EQUALS, "@ge", compare::<{ Ordering::Less as i8 }, true>),
    (operators::LOGICAL_NOT, "@not", not),
];

/// The CEL operator a fast operator function stands for, for error messages.
fn operator_of(function: &str) -> &'static str {
    FAST_OPERATORS.iter().find(|(_, name, _)| *name == function).map_or("", |(operator, _, _)| operator)
}

/// `a < b` and the like: true when `a` orders as `ORDER` (or, `NEGATE`d, when it does not).
fn compare<'b, 'v, const ORDER: i8, const NEGATE: bool>(
    args: Vec<CowVal<'b, 'v>>,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let name = match (ORDER, NEGATE) {
        (-1, false) => "@lt",
        (1, true) => "@le",
        (1, false) => "@gt",
        _ => "@ge",
    };
    let no_overload = || {
        let types = args.iter().map(|arg| arg.get_type().name().to_owned()).collect();
        ExecutionError::no_such_overload(operator_of(name), types)
    };
    let [lhs, rhs] = args.as_slice() else { return Err(no_overload()) };
    let ordering = match lhs.as_comparer().map(|comparer| comparer.compare(rhs.as_ref())) {
        Some(Ok(ordering)) => ordering,
        None
        | Some(Err(
            ExecutionError::NoSuchOverload(_)
            | ExecutionError::ValuesNotComparable(..)
            | ExecutionError::UnsupportedKeyType(_)
            | ExecutionError::UnexpectedType { .. },
        )) => return Err(no_overload()),
        Some(Err(error)) => return Err(error),
    };
    Ok(boolean((ordering as i8 == ORDER) != NEGATE))
}

/// `!a`.
fn not<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    match args.as_slice() {
        [value] => match value.downcast_ref::<CelBool>() {
            Some(b) => Ok(boolean(!*b.inner())),
            None => {
                Err(ExecutionError::no_such_overload(operators::LOGICAL_NOT, vec![value.get_type().name().to_owned()]))
            }
        },
        _ => Err(ExecutionError::invalid_argument_count(1, args.len())),
    }
}

/// A CEL bool borrowed from a constant.
fn boolean<'b, 'v>(value: bool) -> CowVal<'b, 'v> {
    CowVal::Borrowed(if value { &CelBool::TRUE } else { &CelBool::FALSE })
}

/// Function namespaces of [`ENV`]: `math.greatest(..)` calls a function, it reads no variable.
const NAMESPACES: [&str; 5] = ["math", "optional", "lists", "strings", "base64"];

/// Why an expression does not compile, and where (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CelError {
    /// The line of the error, from 1.
    pub line: usize,
    /// The column of the error, from 1, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for CelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for CelError {}

/// A compiled CEL expression plus what it refers to.
#[derive(Clone)]
pub struct CelExpr {
    source: Arc<str>,
    /// The parsed expression, macros expanded, as [`Rewriter`] leaves it.
    expr: Arc<IdedExpr>,
    references: Arc<[String]>,
    /// The estimated cost of one evaluation, see [`limits`].
    cost: u64,
    /// The direct evaluation of the expression, when it has one (see [`fast`]).
    fast: Option<Arc<fast::Program>>,
}

impl fmt::Debug for CelExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CelExpr").field("source", &&*self.source).field("references", &self.references).finish()
    }
}

impl CelExpr {
    /// Compiles once; rejects syntax errors (with position), references to variables not in
    /// `names`, and expressions over the limits: too long, nested too deeply or estimated to cost
    /// more than [`CEL_COST_LIMIT`](crate::CEL_COST_LIMIT).
    pub fn compile(source: &str, names: &[&str]) -> Result<CelExpr, CelError> {
        let at_start = |message: String| CelError { line: 1, column: 1, message };
        limits::prescan(source).map_err(at_start)?;
        let parsed = stacker::grow(limits::PARSE_STACK, || ENV.parser().parse_with_source_info(source));
        let (mut expr, info) = parsed.map_err(|errors| syntax_error(source, &errors))?;
        if limits::depth(&expr) > limits::MAX_DEPTH {
            return Err(at_start(format!(
                "expression is nested too deeply (macros expanded); the limit is {} levels",
                limits::MAX_DEPTH
            )));
        }
        let mut checker = Checker { names, info: &info, scope: Vec::new(), references: Vec::new() };
        checker.walk(&expr)?;
        let references = checker.references.into();
        let cost = limits::estimate(&expr);
        if cost > limits::COST_LIMIT {
            return Err(at_start(format!(
                "estimated cost {} exceeds the limit of {} (a loop costs its list's size times its body; \
                 a list read from the event counts as {} elements)",
                cost_text(cost),
                limits::COST_LIMIT,
                limits::ASSUMED_SIZE
            )));
        }
        Rewriter { names, info: &info, scope: Vec::new() }.walk(&mut expr)?;
        let fast = fast::Program::compile(&expr, names).map(Arc::new);
        Ok(CelExpr { source: source.into(), expr: Arc::new(expr), references, cost, fast })
    }

    /// The estimated cost of one evaluation, in the units of [`limits::COST_LIMIT`].
    pub fn estimated_cost(&self) -> u64 {
        self.cost
    }

    /// Compiles a filter over the event context names (object, oldObject, event, context, now).
    pub fn filter(source: &str) -> Result<CelExpr, CelError> {
        CelExpr::compile(source, &CONTEXT_NAMES)
    }

    /// The source the expression was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The variables the expression reads, in order of first use.
    pub fn references(&self) -> &[String] {
        &self.references
    }

    /// Whether the expression reads `oldObject`.
    pub fn uses_old_object(&self) -> bool {
        self.references.iter().any(|name| name == "oldObject")
    }

    /// true/false; an evaluation error or a non-bool result is Err(reason) — never a silent pass.
    pub fn eval_bool(&self, vars: &Vars) -> Result<bool, String> {
        full(self.eval_bool_within(vars, Budget::FULL))
    }

    /// Like [`eval_bool`](Self::eval_bool) within `budget`; `None` when a budget smaller than
    /// the full one ran out (the full budget may still do).
    pub fn eval_bool_within(&self, vars: &Vars, budget: Budget) -> Option<Result<bool, String>> {
        self.evaluate(vars, budget, |val| match val.downcast_ref::<CelBool>() {
            Some(b) => Ok(*b.inner()),
            None => Err(format!("expected a bool, got {} {}", val.get_type().name(), short(val))),
        })
    }

    /// The result as a string (strings as-is, ints/uints/doubles/bools formatted, others JSON) — used for dedup keys.
    pub fn eval_string(&self, vars: &Vars) -> Result<String, String> {
        full(self.eval_string_within(vars, Budget::FULL))
    }

    /// Like [`eval_string`](Self::eval_string) within `budget`; `None` when a budget smaller
    /// than the full one ran out.
    pub fn eval_string_within(&self, vars: &Vars, budget: Budget) -> Option<Result<String, String>> {
        self.evaluate(vars, budget, |val| match value::scalar_string(val) {
            Some(text) => Ok(text),
            None => value::to_json(val).map(|json| json.to_string()),
        })
    }

    /// The result converted back to JSON (ints stay ints) — used e.g. to extract a list of items from an HTTP response.
    pub fn eval_json(&self, vars: &Vars) -> Result<Value, String> {
        full(self.evaluate(vars, Budget::FULL, value::to_json))
    }

    /// Evaluates the expression against `vars` within `budget` and hands the result to
    /// `convert`; `None` when a budget smaller than the full one ran out. The direct evaluation
    /// answers when it can; otherwise the interpreter starts over with the whole cost budget,
    /// before the same deadline.
    fn evaluate<T>(
        &self,
        vars: &Vars,
        budget: Budget,
        convert: impl Fn(&dyn Val) -> Result<T, String>,
    ) -> Option<Result<T, String>> {
        // a limit that ran out: the full budget's is an error, a smaller one's is no answer yet
        let ran_out = |limit: limits::Exceeded| (budget == Budget::FULL).then(|| Err(limit.reason()));
        // read the clock only for an evaluation that may charge the budget
        let deadline = std::cell::OnceCell::new();
        let deadline = || *deadline.get_or_init(|| Instant::now() + budget.time);
        stacker::maybe_grow(limits::EVAL_RED_ZONE, limits::EVAL_STACK, || {
            let direct =
                |program: &fast::Program| program.evaluate(vars).map(|value| convert(value.to_bound().as_val()));
            match &self.fast {
                Some(program) if !program.charges() => {
                    if let Some(result) = direct(program) {
                        return Some(result);
                    }
                }
                Some(program) => {
                    let (answer, exceeded) = limits::metered(budget.cost, deadline(), || direct(program));
                    // it charges where the interpreter does: a limit it ran into, the interpreter would too
                    match (answer, exceeded) {
                        (_, Some(limit)) => return ran_out(limit),
                        (Some(result), None) => return Some(result),
                        (None, None) => {}
                    }
                }
                None => {}
            }
            let mut context = Context::with_env(Arc::clone(&ENV));
            context.set_variable_resolver(vars);
            let (result, exceeded) =
                limits::metered(budget.cost, deadline(), || match cel::Value::resolve_val(&self.expr, &context) {
                    Ok(value) => convert(&*value),
                    Err(error) => Err(error.to_string()),
                });
            match exceeded {
                Some(limit) => ran_out(limit),
                None => Some(result),
            }
        })
    }

    /// The expression without its direct evaluation: every evaluation runs the interpreter.
    #[cfg(test)]
    fn interpreted(&self) -> CelExpr {
        CelExpr { fast: None, ..self.clone() }
    }
}

/// The result of an evaluation with the full budget, which always has one.
fn full<T>(result: Option<Result<T, String>>) -> Result<T, String> {
    result.unwrap_or_else(|| Err(limits::Exceeded::Cost.reason()))
}

/// A cost for a message: saturated estimates say so rather than print 18446744073709551615.
fn cost_text(cost: u64) -> String {
    if cost == u64::MAX { "beyond 18 quintillion".to_owned() } else { cost.to_string() }
}

/// A value, shortened for an error message.
fn short(val: &dyn Val) -> String {
    let text = value::to_json(val).map(|json| json.to_string()).unwrap_or_default();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// The first syntax error, with its position.
fn syntax_error(source: &str, errors: &ParseErrors) -> CelError {
    let Some(first) = errors.errors.first() else {
        return CelError { line: 1, column: 1, message: "invalid expression".to_owned() };
    };
    let (line, column) = first.pos;
    let mut message = first.msg.clone();
    if errors.errors.len() > 1 {
        message.push_str(&format!(" (and {} more errors)", errors.errors.len() - 1));
    }
    if source.trim().is_empty() {
        message = "empty expression".to_owned();
    }
    CelError {
        line: usize::try_from(line).unwrap_or(1).max(1),
        column: usize::try_from(column).unwrap_or(1).max(1),
        message,
    }
}

/// The 1-based line and column of the node `id`.
fn position(info: &SourceInfo, id: u64) -> (usize, usize) {
    info.offset_for(id).map_or((1, 1), |(start, _)| line_column(&info.source, start as usize))
}

/// Rewrites a checked expression into a faster equivalent.
///
/// * `<`, `<=`, `>`, `>=` and `!` go to the [`FAST_OPERATORS`].
/// * `matches` calls go to [`MATCHES`], and literal patterns are compiled now: an invalid one is
///   a compile error at its position rather than an error on every evaluation.
/// * Loop ranges, `lists.range`, `replace`, `distinct` and `+` go through the [`metered`]
///   functions, which charge the evaluation's budget before they work.
/// * Field selections on variables, `object.status.phase`, become index operations,
///   `object["status"]["phase"]`: the interpreter resolves a selection chain as a qualified name
///   first (joining its segments and probing each prefix as a variable or a type), which costs more
///   than reading the fields. Chains that name a type, like `google.protobuf.Timestamp`, stay.
struct Rewriter<'c> {
    names: &'c [&'c str],
    info: &'c SourceInfo,
    /// Variables bound by the enclosing comprehensions.
    scope: Vec<String>,
}

impl Rewriter<'_> {
    fn walk(&mut self, expr: &mut IdedExpr) -> Result<(), CelError> {
        self.meter(expr);
        match &mut expr.expr {
            Expr::Call(call) => {
                let member = call.target.is_some() && call.args.len() == 1;
                let global = call.target.is_none() && call.args.len() == 2;
                if call.func_name == "matches" && (member || global) {
                    if let Some(target) = call.target.take() {
                        call.args.insert(0, *target);
                    }
                    call.func_name = MATCHES.to_owned();
                    if let Expr::Literal(LiteralValue::String(pattern)) = &call.args[1].expr
                        && let Err(error) = regex(pattern.inner())
                    {
                        let (line, column) = position(self.info, call.args[1].id);
                        return Err(CelError { line, column, message: format!("invalid regular expression: {error}") });
                    }
                }
                if call.target.is_none()
                    && let Some((_, name, _)) = FAST_OPERATORS.iter().find(|(op, _, _)| *op == call.func_name)
                {
                    call.func_name = (*name).to_owned();
                }
                if let Some(target) = &mut call.target {
                    self.walk(target)?;
                }
                call.args.iter_mut().try_for_each(|arg| self.walk(arg))
            }
            Expr::Comprehension(c) => {
                let body = limits::body_cost(&[&c.loop_cond, &c.loop_step]);
                self.walk(&mut c.iter_range)?;
                let range = std::mem::take(&mut c.iter_range);
                let cost =
                    IdedExpr { id: range.id, expr: Expr::Literal(LiteralValue::Int(saturating_int(body).into())) };
                c.iter_range = IdedExpr {
                    id: range.id,
                    expr: Expr::Call(CallExpr {
                        func_name: metered::LOOP.to_owned(),
                        target: None,
                        args: vec![range, cost],
                    }),
                };
                self.walk(&mut c.accu_init)?;
                let depth = self.scope.len();
                self.scope.push(c.iter_var.clone());
                self.scope.extend(c.iter_var2.clone());
                self.scope.push(c.accu_var.clone());
                let body =
                    [&mut c.loop_cond, &mut c.loop_step, &mut c.result].into_iter().try_for_each(|e| self.walk(e));
                self.scope.truncate(depth);
                body
            }
            Expr::List(list) => list.elements.iter_mut().try_for_each(|e| self.walk(e)),
            Expr::Map(map) => map.entries.iter_mut().try_for_each(|entry| self.entry(&mut entry.expr)),
            Expr::Struct(strukt) => strukt.entries.iter_mut().try_for_each(|entry| self.entry(&mut entry.expr)),
            Expr::Select(select) => {
                self.walk(&mut select.operand)?;
                let names_something_else = match &select.operand.expr {
                    Expr::Ident(root) => !self.is_variable(root),
                    // still a selection after its own rewrite: part of a name that is no variable
                    Expr::Select(inner) => !inner.test,
                    _ => false,
                };
                if !select.test && !names_something_else {
                    let operand = std::mem::take(&mut *select.operand);
                    let field = std::mem::take(&mut select.field);
                    let key = IdedExpr { id: expr.id, expr: Expr::Literal(LiteralValue::String(field.into())) };
                    expr.expr = Expr::Call(CallExpr {
                        func_name: operators::INDEX.to_owned(),
                        target: None,
                        args: vec![operand, key],
                    });
                }
                Ok(())
            }
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Ok(()),
        }
    }

    fn entry(&mut self, entry: &mut EntryExpr) -> Result<(), CelError> {
        match entry {
            EntryExpr::StructField(field) => self.walk(&mut field.value),
            EntryExpr::MapEntry(e) => {
                self.walk(&mut e.key)?;
                self.walk(&mut e.value)
            }
        }
    }

    fn is_variable(&self, name: &str) -> bool {
        self.scope.iter().any(|bound| bound == name) || self.names.contains(&name)
    }

    /// Sends calls whose work can outgrow the budget to their [`metered`] equivalents. The
    /// accumulating `+` of the `map` and `filter` macros stays: the interpreter appends in place
    /// there, and the loop already pays for each element.
    fn meter(&mut self, expr: &mut IdedExpr) {
        let Expr::Call(call) = &mut expr.expr else { return };
        let target_is =
            |name: &str| matches!(call.target.as_deref(), Some(IdedExpr { expr: Expr::Ident(n), .. }) if n == name);
        let metered = match (call.func_name.as_str(), call.args.len()) {
            ("range", 1) if target_is("lists") && !self.is_variable("lists") => {
                call.target = None;
                metered::LISTS_RANGE
            }
            ("replace", 2 | 3) if call.target.is_some() => metered::REPLACE,
            ("distinct", 0) if call.target.is_some() => metered::DISTINCT,
            (operators::ADD, 2)
                if call.target.is_none()
                    && !matches!(&call.args[0].expr, Expr::Ident(name) if name.starts_with('@')) =>
            {
                call.func_name = metered::ADD.to_owned();
                return;
            }
            _ => return,
        };
        if let Some(target) = call.target.take() {
            call.args.insert(0, *target);
        }
        call.func_name = metered.to_owned();
    }
}

/// `value` as a CEL int, `i64::MAX` when it is larger.
fn saturating_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The 1-based line and column (in characters) of the byte `offset` of `source`.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for (at, c) in source.char_indices() {
        if at >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// Walks a compiled expression and checks that every variable it reads is declared.
struct Checker<'c> {
    names: &'c [&'c str],
    info: &'c SourceInfo,
    /// Variables bound by the enclosing comprehensions.
    scope: Vec<&'c str>,
    references: Vec<String>,
}

impl<'c> Checker<'c> {
    fn walk(&mut self, expr: &'c IdedExpr) -> Result<(), CelError> {
        match &expr.expr {
            Expr::Ident(name) => self.ident(expr.id, name),
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    let namespace = matches!(&target.expr, Expr::Ident(root)
                        if NAMESPACES.contains(&root.as_str()) && !self.is_variable(root));
                    if !namespace {
                        self.walk(target)?;
                    }
                }
                call.args.iter().try_for_each(|arg| self.walk(arg))
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range)?;
                self.walk(&c.accu_init)?;
                let depth = self.scope.len();
                self.scope.push(&c.iter_var);
                self.scope.extend(c.iter_var2.as_deref());
                self.scope.push(&c.accu_var);
                let body = [&c.loop_cond, &c.loop_step, &c.result].into_iter().try_for_each(|e| self.walk(e));
                self.scope.truncate(depth);
                body
            }
            Expr::List(list) => list.elements.iter().try_for_each(|e| self.walk(e)),
            Expr::Map(map) => map.entries.iter().try_for_each(|entry| self.entry(&entry.expr)),
            Expr::Struct(strukt) => strukt.entries.iter().try_for_each(|entry| self.entry(&entry.expr)),
            Expr::Select(select) => {
                if !select.test && self.is_type_name(expr) {
                    return Ok(());
                }
                self.walk(&select.operand)
            }
            Expr::Literal(_) | Expr::Unspecified => Ok(()),
        }
    }

    fn entry(&mut self, entry: &'c EntryExpr) -> Result<(), CelError> {
        match entry {
            EntryExpr::StructField(field) => self.walk(&field.value),
            EntryExpr::MapEntry(e) => {
                self.walk(&e.key)?;
                self.walk(&e.value)
            }
        }
    }

    /// Whether `expr` spells the qualified name of a type, such as `google.protobuf.Timestamp`.
    fn is_type_name(&self, expr: &IdedExpr) -> bool {
        let mut segments = Vec::new();
        let mut at = expr;
        loop {
            match &at.expr {
                Expr::Select(select) if !select.test => {
                    segments.push(select.field.as_str());
                    at = &select.operand;
                }
                Expr::Ident(root) if !self.is_variable(root) => {
                    segments.push(root);
                    segments.reverse();
                    return ENV.types().find_type(&segments.join(".")).is_some();
                }
                _ => return false,
            }
        }
    }

    fn is_variable(&self, name: &str) -> bool {
        self.scope.contains(&name) || self.names.contains(&name)
    }

    fn ident(&mut self, id: u64, name: &str) -> Result<(), CelError> {
        if name.starts_with('@') || self.scope.contains(&name) {
            return Ok(());
        }
        if self.names.contains(&name) {
            if !self.references.iter().any(|r| r == name) {
                self.references.push(name.to_owned());
            }
            return Ok(());
        }
        if ENV.types().find_type(name).is_some() {
            return Ok(());
        }
        let (line, column) = position(self.info, id);
        let available = if self.names.is_empty() { "none".to_owned() } else { self.names.join(", ") };
        Err(CelError { line, column, message: format!("undeclared variable '{name}' (available: {available})") })
    }
}

/// The variables of one evaluation, borrowed, bound lazily.
#[derive(Debug, Clone)]
pub struct Vars<'a> {
    slots: Slots<'a>,
}

/// Where [`Vars`] keeps its values.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant, reason = "inline on purpose: binding an event's context allocates nothing")]
enum Slots<'a> {
    /// The event context, in the order of [`CONTEXT_NAMES`].
    Event([Bound<'a>; 5]),
    /// Any names.
    Named(Vec<(&'a str, Bound<'a>)>),
}

impl<'a> Vars<'a> {
    /// The event context of `event` as seen by trigger `trigger`: object, oldObject (null when absent), event {type, source, trigger, time, id, preset?, cluster?, severity?, tags?}, context {sourceType, event, data (= object), timestamp}, now (a CEL timestamp).
    pub fn for_event(event: &'a Event, trigger: &'a str, now: DateTime<Utc>) -> Vars<'a> {
        let old_object = event.old_object.as_ref().map_or(Bound::Null(CelNull), Bound::json);
        Vars {
            slots: Slots::Event([
                Bound::json(&event.object),
                old_object,
                Bound::Record(Record::Event { meta: &event.meta, trigger }),
                Bound::Record(Record::Context { meta: &event.meta, object: &event.object }),
                Bound::Time(CelTimestamp::from(now.fixed_offset())),
            ]),
        }
    }

    /// Arbitrary JSON variables (e.g. `response` for the http poller, or a document for `ktrigger eval`); a `now` given as an RFC 3339 string becomes a timestamp.
    pub fn from_json(pairs: &[(&'a str, &'a Value)]) -> Vars<'a> {
        let named = pairs
            .iter()
            .map(|&(name, value)| {
                let timestamp = match value {
                    Value::String(text) if name == "now" => DateTime::parse_from_rfc3339(text).ok(),
                    _ => None,
                };
                (name, timestamp.map_or_else(|| Bound::json(value), |t| Bound::Time(CelTimestamp::from(t))))
            })
            .collect();
        Vars { slots: Slots::Named(named) }
    }

    /// These variables with `now` set to `now`, as a timestamp.
    pub fn with_now(mut self, now: DateTime<Utc>) -> Vars<'a> {
        let now_value = Bound::Time(CelTimestamp::from(now.fixed_offset()));
        match &mut self.slots {
            Slots::Event(slots) => slots[4] = now_value,
            Slots::Named(named) => match named.iter_mut().find(|(name, _)| *name == "now") {
                Some(slot) => slot.1 = now_value,
                None => named.push(("now", now_value)),
            },
        }
        self
    }

    /// Whether a variable named `name` is bound.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn get(&self, name: &str) -> Option<&Bound<'a>> {
        self.get_at(name, CONTEXT_NAMES.iter().position(|n| *n == name))
    }

    /// The variable `name`, whose position in [`CONTEXT_NAMES`] is `slot`.
    fn get_at(&self, name: &str, slot: Option<usize>) -> Option<&Bound<'a>> {
        match &self.slots {
            Slots::Event(slots) => slot.and_then(|i| slots.get(i)),
            Slots::Named(named) => named.iter().find(|(n, _)| *n == name).map(|(_, v)| v),
        }
    }
}

impl VariableResolver for Vars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        self.get(variable).map(|bound| CowVal::Borrowed(bound.as_val()))
    }
}
