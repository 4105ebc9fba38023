//! A direct evaluator for the shapes most filters and keys are made of: paths into the object,
//! literals, comparisons, `&&`, `||`, `!`, `?:`, `in`, `has()`, `size()`, string tests,
//! `matches`, arithmetic, function calls and `all`/`exists` loops.
//!
//! The `cel` interpreter looks every function up by name, boxes every field it reads and builds a
//! context per evaluation; for a filter like `object.status.phase == "Running"` that is most of
//! the work. [`Program::compile`] turns a compiled expression, once, into a tree of [`Node`]s that
//! reads the JSON in place. The values it computes are the interpreter's: equality, ordering,
//! `in`, arithmetic and function calls go through the same operations of the `cel` crate and of
//! [`ENV`](super::ENV), on the same kinds of values. It charges the budget where the interpreter
//! does (loops and `+`), in the same order.
//!
//! It answers only when the interpreter would have answered the same without an error on the way.
//! On anything else (an error, a missing field, a value of a kind it does not handle) it gives up,
//! and the interpreter evaluates the expression from the start: errors and their messages stay
//! the interpreter's. An expression with any part it does not know has no program at all.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use cel::common::ast::{ComprehensionExpr, Expr, IdedExpr, LiteralValue, operators};
use cel::common::value::CowVal;
use regex::Regex;
use serde_json::Value;

use super::metered;
use super::value::{Bound, View};
use super::{ENV, MATCHES, Vars, regex};
use crate::event::CONTEXT_NAMES;

/// An expression ready for direct evaluation.
#[derive(Debug)]
pub(crate) struct Program {
    root: Node,
    /// Whether it may charge the budget: it has loops, `+` or function calls. One that does not
    /// does work bounded by its own size and needs no meter.
    charges: bool,
}

/// One operation of a [`Program`].
#[derive(Debug)]
enum Node {
    /// A literal, or a call on literals computed when compiling.
    Const(View<'static>),
    /// A variable of [`Vars`], with its position in [`CONTEXT_NAMES`].
    Var { name: String, slot: Option<usize> },
    /// The element a loop is at, by the depth of its loop.
    Local(usize),
    /// `a[b]` and `a.b`.
    Index(Box<[Node; 2]>),
    /// `has(a.field)`.
    Has(Box<Node>, String),
    /// `!a`.
    Not(Box<Node>),
    /// `a && b`.
    And(Box<[Node; 2]>),
    /// `a || b`.
    Or(Box<[Node; 2]>),
    /// `a ? b : c`.
    Cond(Box<[Node; 3]>),
    /// `a == b`, or `a != b` when negated.
    Equals(Box<[Node; 2]>, bool),
    /// `a < b` and the like: true when `a` orders as the ordering (or, negated, when it does not).
    Order(Box<[Node; 2]>, Ordering, bool),
    /// `a in b`.
    In(Box<[Node; 2]>),
    /// `a in [literals]`.
    InLiterals(Box<Node>, Vec<View<'static>>),
    /// `size(a)` and `a.size()`.
    Size(Box<Node>),
    /// `text.startsWith(s)`, `text.endsWith(s)`, `text.contains(s)`: the text, then the argument.
    Text(Box<[Node; 2]>, TextTest),
    /// `text.matches(pattern)`.
    Matches(Box<Node>, Pattern),
    /// `a + b`.
    Add(Box<[Node; 2]>),
    /// `a - b`, `a * b`, `a / b`, `a % b`.
    Arithmetic(Box<[Node; 2]>, Arithmetic),
    /// A function of [`ENV`](super::ENV), called with its arguments.
    Call(String, Vec<Node>),
    /// `range.all(x, predicate)` or `range.exists(x, predicate)`.
    Loop(Box<Loop>),
}

impl Node {
    /// Whether this node or one inside it may charge the budget.
    fn charges(&self) -> bool {
        match self {
            Node::Loop(_) | Node::Add(_) | Node::Call(..) => true,
            Node::Const(_) | Node::Var { .. } | Node::Local(_) => false,
            Node::Has(a, _) | Node::Not(a) | Node::InLiterals(a, _) | Node::Size(a) => a.charges(),
            Node::Matches(a, pattern) => a.charges() || matches!(pattern, Pattern::Computed(p) if p.charges()),
            Node::Index(ab)
            | Node::And(ab)
            | Node::Or(ab)
            | Node::Equals(ab, _)
            | Node::Order(ab, ..)
            | Node::In(ab)
            | Node::Text(ab, _)
            | Node::Arithmetic(ab, _) => ab.iter().any(Node::charges),
            Node::Cond(abc) => abc.iter().any(Node::charges),
        }
    }
}

/// The string tests.
#[derive(Debug, Clone, Copy)]
enum TextTest {
    StartsWith,
    EndsWith,
    Contains,
}

/// The binary operators handed to the value's own implementation.
#[derive(Debug, Clone, Copy)]
enum Arithmetic {
    Subtract,
    Multiply,
    Divide,
    Modulo,
}

/// The pattern of a `matches`.
#[derive(Debug)]
enum Pattern {
    /// A literal, compiled once.
    Fixed(Arc<Regex>),
    /// Computed per evaluation.
    Computed(Box<Node>),
}

/// An `all` or `exists` loop.
#[derive(Debug)]
struct Loop {
    range: Node,
    /// The cost of one pass, charged per element before the loop starts.
    body_cost: u64,
    predicate: Node,
    /// true for `exists` (stops at the first true), false for `all` (stops at the first false).
    exists: bool,
}

impl Program {
    /// The program of a compiled expression over `names` (as the `Rewriter` leaves it); `None`
    /// when some part of it is not one of the shapes above.
    pub(crate) fn compile(expr: &IdedExpr, names: &[&str]) -> Option<Program> {
        let root = Compiler { names, locals: Vec::new() }.node(expr)?;
        Some(Program { charges: root.charges(), root })
    }

    /// Whether an evaluation may charge the budget.
    pub(crate) fn charges(&self) -> bool {
        self.charges
    }

    /// The value of the expression; `None` when the interpreter must evaluate it.
    pub(crate) fn evaluate<'v>(&'v self, vars: &'v Vars<'_>) -> Option<View<'v>> {
        let mut scope = Scope { vars, locals: Vec::new() };
        scope.eval(&self.root)
    }
}

/// Turns expression nodes into program nodes.
struct Compiler<'c> {
    names: &'c [&'c str],
    /// The variables of the enclosing loops, outermost first.
    locals: Vec<&'c str>,
}

impl<'c> Compiler<'c> {
    fn node(&mut self, expr: &'c IdedExpr) -> Option<Node> {
        match &expr.expr {
            Expr::Literal(literal) => literal_view(literal).map(Node::Const),
            Expr::Ident(name) => self.ident(name),
            Expr::Select(select) if select.test => {
                Some(Node::Has(Box::new(self.node(&select.operand)?), select.field.clone()))
            }
            Expr::Call(call) => match &call.target {
                None => self.global(&call.func_name, &call.args),
                Some(target) => self.member(&call.func_name, target, &call.args),
            },
            Expr::Comprehension(comprehension) => self.comprehension(comprehension),
            Expr::Select(_) | Expr::List(_) | Expr::Map(_) | Expr::Struct(_) | Expr::Unspecified => None,
        }
    }

    fn ident(&self, name: &str) -> Option<Node> {
        if let Some(depth) = self.locals.iter().rposition(|local| *local == name) {
            return Some(Node::Local(depth));
        }
        self.names
            .contains(&name)
            .then(|| Node::Var { name: name.to_owned(), slot: CONTEXT_NAMES.iter().position(|n| *n == name) })
    }

    fn pair(&mut self, args: &'c [IdedExpr]) -> Option<Box<[Node; 2]>> {
        match args {
            [a, b] => Some(Box::new([self.node(a)?, self.node(b)?])),
            _ => None,
        }
    }

    fn one(&mut self, args: &'c [IdedExpr]) -> Option<Box<Node>> {
        match args {
            [a] => Some(Box::new(self.node(a)?)),
            _ => None,
        }
    }

    /// A call without a target: an operator or a function.
    fn global(&mut self, name: &str, args: &'c [IdedExpr]) -> Option<Node> {
        Some(match name {
            operators::LOGICAL_AND => Node::And(self.pair(args)?),
            operators::LOGICAL_OR => Node::Or(self.pair(args)?),
            operators::EQUALS => Node::Equals(self.pair(args)?, false),
            operators::NOT_EQUALS => Node::Equals(self.pair(args)?, true),
            operators::INDEX => Node::Index(self.pair(args)?),
            operators::SUBSTRACT => Node::Arithmetic(self.pair(args)?, Arithmetic::Subtract),
            operators::MULTIPLY => Node::Arithmetic(self.pair(args)?, Arithmetic::Multiply),
            operators::DIVIDE => Node::Arithmetic(self.pair(args)?, Arithmetic::Divide),
            operators::MODULO => Node::Arithmetic(self.pair(args)?, Arithmetic::Modulo),
            operators::CONDITIONAL => match args {
                [c, a, b] => Node::Cond(Box::new([self.node(c)?, self.node(a)?, self.node(b)?])),
                _ => return None,
            },
            operators::IN => match args {
                [needle, IdedExpr { expr: Expr::List(list), .. }] if list.optional_indices.is_empty() => {
                    let literals = list.elements.iter().map(|e| match &e.expr {
                        Expr::Literal(literal) => literal_view(literal),
                        _ => None,
                    });
                    Node::InLiterals(Box::new(self.node(needle)?), literals.collect::<Option<_>>()?)
                }
                _ => Node::In(self.pair(args)?),
            },
            metered::ADD => Node::Add(self.pair(args)?),
            MATCHES => match args {
                [text, IdedExpr { expr: Expr::Literal(LiteralValue::String(pattern)), .. }] => {
                    Node::Matches(Box::new(self.node(text)?), Pattern::Fixed(regex(pattern.inner()).ok()?))
                }
                [text, pattern] => {
                    Node::Matches(Box::new(self.node(text)?), Pattern::Computed(Box::new(self.node(pattern)?)))
                }
                _ => return None,
            },
            "size" => Node::Size(self.one(args)?),
            "@not" => Node::Not(self.one(args)?),
            "@lt" => Node::Order(self.pair(args)?, Ordering::Less, false),
            "@le" => Node::Order(self.pair(args)?, Ordering::Greater, true),
            "@gt" => Node::Order(self.pair(args)?, Ordering::Greater, false),
            "@ge" => Node::Order(self.pair(args)?, Ordering::Less, true),
            _ => self.call(name, args)?,
        })
    }

    /// A function of the environment; computed now when its arguments are literals and it does
    /// not charge the budget (whose functions start with `@`). Operators the interpreter
    /// evaluates itself rather than through the environment (`-_`, `_[?_]`, ...), and the
    /// metered functions that build lists, are left to it.
    fn call(&mut self, name: &str, args: &'c [IdedExpr]) -> Option<Node> {
        let function = name.starts_with(|c: char| c.is_ascii_alphabetic()) || name == metered::REPLACE;
        if !function {
            return None;
        }
        let args: Vec<Node> = args.iter().map(|arg| self.node(arg)).collect::<Option<_>>()?;
        let literals: Option<Vec<&View<'static>>> = args
            .iter()
            .map(|arg| match arg {
                Node::Const(view) => Some(view),
                _ => None,
            })
            .collect();
        if let Some(literals) = literals.filter(|_| !name.starts_with('@')) {
            let views: Vec<View<'_>> = literals.iter().map(|view| view.borrowed()).collect();
            if let Some(value) = call_function(name, &views) {
                return Some(Node::Const(value));
            }
        }
        Some(Node::Call(name.to_owned(), args))
    }

    /// A call on a target: a string test or `size()`.
    fn member(&mut self, name: &str, target: &'c IdedExpr, args: &'c [IdedExpr]) -> Option<Node> {
        let test = match name {
            "size" if args.is_empty() => return Some(Node::Size(Box::new(self.node(target)?))),
            "startsWith" => TextTest::StartsWith,
            "endsWith" => TextTest::EndsWith,
            "contains" => TextTest::Contains,
            _ => return None,
        };
        // the interpreter evaluates the argument before the target
        let [arg] = args else { return None };
        let arg = self.node(arg)?;
        Some(Node::Text(Box::new([self.node(target)?, arg]), test))
    }

    /// The loops of the `all` and `exists` macros, as the parser expands them and the `Rewriter`
    /// leaves them.
    fn comprehension(&mut self, c: &'c ComprehensionExpr) -> Option<Node> {
        if c.iter_var2.is_some() || !is_ident(&c.result, &c.accu_var) {
            return None;
        }
        let exists = match &c.accu_init.expr {
            Expr::Literal(LiteralValue::Boolean(init)) => !*init.inner(),
            _ => return None,
        };
        let (connective, stop) = if exists { (operators::LOGICAL_OR, "@not") } else { (operators::LOGICAL_AND, "") };
        let Expr::Call(cond) = &c.loop_cond.expr else { return None };
        let cond_reads_accu = match cond.args.as_slice() {
            [arg] if stop.is_empty() => is_ident(arg, &c.accu_var),
            [IdedExpr { expr: Expr::Call(not), .. }] => {
                not.func_name == stop
                    && not.target.is_none()
                    && matches!(not.args.as_slice(), [a] if is_ident(a, &c.accu_var))
            }
            _ => false,
        };
        if cond.func_name != operators::NOT_STRICTLY_FALSE || cond.target.is_some() || !cond_reads_accu {
            return None;
        }
        let Expr::Call(step) = &c.loop_step.expr else { return None };
        let [accu, predicate] = step.args.as_slice() else { return None };
        if step.func_name != connective || step.target.is_some() || !is_ident(accu, &c.accu_var) {
            return None;
        }
        let Expr::Call(wrapped) = &c.iter_range.expr else { return None };
        if wrapped.func_name != metered::LOOP || wrapped.target.is_some() {
            return None;
        }
        let [range, IdedExpr { expr: Expr::Literal(LiteralValue::Int(body_cost)), .. }] = wrapped.args.as_slice()
        else {
            return None;
        };
        let range = self.node(range)?;
        self.locals.push(&c.iter_var);
        let predicate = self.node(predicate);
        self.locals.pop();
        Some(Node::Loop(Box::new(Loop {
            range,
            body_cost: u64::try_from(*body_cost.inner()).unwrap_or(1),
            predicate: predicate?,
            exists,
        })))
    }
}

fn is_ident(expr: &IdedExpr, name: &str) -> bool {
    matches!(&expr.expr, Expr::Ident(ident) if ident == name)
}

/// The value of a literal; bytes are left to the interpreter.
fn literal_view(literal: &LiteralValue) -> Option<View<'static>> {
    Some(match literal {
        LiteralValue::Null => View::Null,
        LiteralValue::Boolean(b) => View::Bool(*b.inner()),
        LiteralValue::Int(i) => View::Int(*i.inner()),
        LiteralValue::UInt(u) => View::UInt(*u.inner()),
        LiteralValue::Double(d) => View::Double(*d.inner()),
        LiteralValue::String(s) => View::Str(Cow::Owned(s.inner().to_owned())),
        LiteralValue::Bytes(_) => return None,
    })
}

/// Calls the overload of `name` in [`ENV`](super::ENV) that takes `args`, as the interpreter
/// does; `None` when there is none, it fails, or its result is no scalar.
fn call_function(name: &str, args: &[View<'_>]) -> Option<View<'static>> {
    let bound: Vec<Bound<'_>> = args.iter().map(View::to_bound).collect();
    let args: Vec<CowVal<'_, '_>> = bound.iter().map(|b| CowVal::Borrowed(b.as_val())).collect();
    let function = ENV.find_overload(name, &args)?;
    let result = function(args).ok()?;
    View::scalar(result.as_ref())
}

/// One evaluation: the variables, and the elements the enclosing loops are at.
struct Scope<'v, 'a> {
    vars: &'v Vars<'a>,
    locals: Vec<View<'v>>,
}

impl<'v> Scope<'v, '_> {
    fn eval(&mut self, node: &'v Node) -> Option<View<'v>> {
        match node {
            Node::Const(value) => Some(value.borrowed()),
            Node::Var { name, slot } => self.vars.get_at(name, *slot).map(View::of),
            Node::Local(depth) => self.locals.get(*depth).cloned(),
            Node::Index(operands) => {
                let [target, key] = &**operands;
                let target = self.eval(target)?;
                index(target, &self.eval(key)?)
            }
            Node::Has(target, field) => match self.eval(target)? {
                View::Json(Value::Object(map)) => Some(View::Bool(map.contains_key(field))),
                View::Record(record) => Some(View::Bool(record.has(field))),
                _ => None,
            },
            Node::Not(operand) => match self.eval(operand)? {
                View::Bool(b) => Some(View::Bool(!b)),
                _ => None,
            },
            Node::And(operands) => self.connective(operands, false),
            Node::Or(operands) => self.connective(operands, true),
            Node::Cond(operands) => {
                let [cond, then, otherwise] = &**operands;
                match self.eval(cond)? {
                    View::Bool(true) => self.eval(then),
                    View::Bool(false) => self.eval(otherwise),
                    _ => None,
                }
            }
            Node::Equals(operands, negate) => {
                let equal = match self.both(operands)? {
                    (View::Str(a), View::Str(b)) => a == b,
                    (View::Int(a), View::Int(b)) => a == b,
                    (View::Bool(a), View::Bool(b)) => a == b,
                    (a, b) => a.to_bound().as_val().equals(b.to_bound().as_val()),
                };
                Some(View::Bool(equal != *negate))
            }
            Node::Order(operands, order, negate) => {
                let ordering = match self.both(operands)? {
                    (View::Int(a), View::Int(b)) => a.cmp(&b),
                    (View::Str(a), View::Str(b)) => a.cmp(&b),
                    (a, b) => a.to_bound().as_val().as_comparer()?.compare(b.to_bound().as_val()).ok()?,
                };
                Some(View::Bool((ordering == *order) != *negate))
            }
            Node::In(operands) => {
                let (needle, haystack) = self.both(operands)?;
                let (needle, haystack) = (needle.to_bound(), haystack.to_bound());
                haystack.as_val().as_container()?.contains(needle.as_val()).ok().map(View::Bool)
            }
            Node::InLiterals(needle, literals) => {
                let needle = self.eval(needle)?;
                let needle = needle.to_bound();
                Some(View::Bool(literals.iter().any(|l| l.to_bound().as_val().equals(needle.as_val()))))
            }
            Node::Size(operand) => match self.eval(operand)? {
                View::Json(Value::Array(list)) => i64::try_from(list.len()).ok().map(View::Int),
                View::Json(Value::Object(map)) => i64::try_from(map.len()).ok().map(View::Int),
                View::Str(text) => i64::try_from(text.chars().count()).ok().map(View::Int),
                _ => None,
            },
            Node::Text(operands, test) => {
                let [text, arg] = &**operands;
                let arg = self.eval(arg)?;
                let (View::Str(text), View::Str(arg)) = (self.eval(text)?, arg) else { return None };
                Some(View::Bool(match test {
                    TextTest::StartsWith => text.starts_with(&*arg),
                    TextTest::EndsWith => text.ends_with(&*arg),
                    TextTest::Contains => text.contains(&*arg),
                }))
            }
            Node::Matches(text, pattern) => {
                let View::Str(text) = self.eval(text)? else { return None };
                let found = match pattern {
                    Pattern::Fixed(regex) => regex.is_match(&text),
                    Pattern::Computed(pattern) => match self.eval(pattern)? {
                        View::Str(pattern) => regex(&pattern).ok()?.is_match(&text),
                        _ => return None,
                    },
                };
                Some(View::Bool(found))
            }
            Node::Add(operands) => match self.both(operands)? {
                (View::Str(a), View::Str(b)) => {
                    metered::charge_concat(a.len() as u64, b.len() as u64).ok()?;
                    Some(View::Str(Cow::Owned(a.into_owned() + &b)))
                }
                (View::Int(a), View::Int(b)) => a.checked_add(b).map(View::Int),
                (a, b) => call_function(metered::ADD, &[a, b]),
            },
            Node::Arithmetic(operands, op) => {
                let (a, b) = self.both(operands)?;
                let (a, b) = (a.to_bound(), b.to_bound());
                let (a, b) = (a.as_val(), b.as_val());
                let result = match op {
                    Arithmetic::Subtract => a.as_subtractor()?.sub(b),
                    Arithmetic::Multiply => a.as_multiplier()?.mul(b),
                    Arithmetic::Divide => a.as_divider()?.div(b),
                    Arithmetic::Modulo => a.as_modder()?.modulo(b),
                };
                View::scalar(result.ok()?.as_ref())
            }
            Node::Call(name, args) => {
                let args: Vec<View<'v>> = args.iter().map(|arg| self.eval(arg)).collect::<Option<_>>()?;
                call_function(name, &args)
            }
            Node::Loop(each) => self.run_loop(each),
        }
    }

    /// Both operands, the first evaluated first.
    fn both(&mut self, operands: &'v [Node; 2]) -> Option<(View<'v>, View<'v>)> {
        let [a, b] = operands;
        let a = self.eval(a)?;
        Some((a, self.eval(b)?))
    }

    /// `a && b` (`decisive` false) or `a || b` (`decisive` true): `a` decides when it is
    /// `decisive`, else `b` does.
    fn connective(&mut self, operands: &'v [Node; 2], decisive: bool) -> Option<View<'v>> {
        let [a, b] = operands;
        match self.eval(a)? {
            View::Bool(a) if a == decisive => Some(View::Bool(a)),
            View::Bool(_) => match self.eval(b)? {
                View::Bool(b) => Some(View::Bool(b)),
                _ => None,
            },
            _ => None,
        }
    }

    fn run_loop(&mut self, each: &'v Loop) -> Option<View<'v>> {
        match self.eval(&each.range)? {
            View::Json(Value::Array(list)) => self.fold(each, list.len(), list.iter().map(View::json)),
            View::Json(Value::Object(map)) => {
                self.fold(each, map.len(), map.keys().map(|key| View::Str(Cow::Borrowed(key))))
            }
            _ => None,
        }
    }

    /// Runs `each` over `count` items, after charging for them.
    fn fold(&mut self, each: &'v Loop, count: usize, items: impl Iterator<Item = View<'v>>) -> Option<View<'v>> {
        metered::charge_iterations(count as u64, each.body_cost).ok()?;
        let depth = self.locals.len();
        for item in items {
            self.locals.push(item);
            let passed = self.eval(&each.predicate);
            self.locals.truncate(depth);
            match passed? {
                View::Bool(passed) if passed == each.exists => return Some(View::Bool(passed)),
                View::Bool(_) => {}
                _ => return None,
            }
        }
        Some(View::Bool(!each.exists))
    }
}

/// `target[key]` where the interpreter would find it: a field of an object or a record, an
/// element of an array.
fn index<'v>(target: View<'v>, key: &View<'_>) -> Option<View<'v>> {
    match (target, key) {
        (View::Json(Value::Object(map)), View::Str(key)) => map.get(&**key).map(View::json),
        (View::Json(Value::Array(list)), View::Int(at)) => list.get(usize::try_from(*at).ok()?).map(View::json),
        (View::Record(record), View::Str(key)) => record.field(key),
        _ => None,
    }
}
