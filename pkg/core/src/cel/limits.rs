//! The bounds of one expression, modelled on Kubernetes' CEL cost budget: its length and nesting
//! are checked before and after parsing, its cost is estimated when it compiles, and a budget and
//! a deadline are enforced while it runs.
//!
//! The `cel` crate's parser and interpreter recurse once or more per level of nesting, so an
//! expression nested too deeply overflows the stack of the thread that parses or evaluates it and
//! aborts the process. [`prescan`] bounds the nesting from the text alone, before the parser sees
//! it; [`depth`] checks the parsed tree, macros expanded.
//!
//! Costs are in abstract units of about one evaluated node each. The estimate assumes that a
//! list, map or string read from the event has [`ASSUMED_SIZE`] elements; a loop costs its
//! range's size times its body, so nested loops multiply. At run time every loop charges the real
//! size of its range times its body before it starts, and the functions whose work grows faster
//! than their input (`+` on strings and lists, `replace`, `distinct`, `lists.range`) charge what
//! they are about to produce.

use std::cell::Cell;
use std::time::{Duration, Instant};

use cel::ExecutionError;
use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};

pub use ktrigger_api::MAX_EXPRESSION;

/// Deepest nesting of an expression: operators, calls, selections, brackets and macro bodies.
/// Realistic filters nest less than 15 deep.
pub const MAX_DEPTH: usize = 32;

/// Stack that parsing runs on. The parser's generated code uses a lot of stack per bracket:
/// 32 nested parentheses need 4 to 8 MiB unoptimised, under 256 KiB optimised (measured on
/// threads of decreasing stack sizes).
pub const PARSE_STACK: usize = 32 << 20;

/// Stack an evaluation needs at the deepest nesting allowed, with a margin: it needs 1 to 1.5 MiB
/// unoptimised, 64 to 128 KiB optimised. An evaluation starting with less stack left runs on a
/// new stack of [`EVAL_STACK`].
pub const EVAL_RED_ZONE: usize = if cfg!(debug_assertions) { 2 << 20 } else { 512 << 10 };

/// The stack an evaluation gets when its thread has less than [`EVAL_RED_ZONE`] left.
pub const EVAL_STACK: usize = 4 << 20;

/// Most cost units one evaluation may use, estimated at load and counted at run time (the
/// per-call limit of Kubernetes' CEL).
pub const COST_LIMIT: u64 = 1_000_000;

/// Longest time one evaluation may run before it fails.
pub const TIME_LIMIT: Duration = Duration::from_millis(250);

/// Elements the estimate assumes for a list, map or string read from the event.
pub const ASSUMED_SIZE: u64 = 100;

/// Bytes that `+` and `replace` may produce per cost unit: the budget also bounds what one
/// evaluation builds that way to about 8 MB.
const BYTES_PER_UNIT: u64 = 8;

/// Checks the length and an upper bound of the nesting of `source` without parsing it.
///
/// Within a bracket, every operator, `.`, `?` and `:` may nest one level deeper, except `&&` and
/// `||`, whose chains the parser balances (their terms add the logarithm of their count), and
/// commas, which start over. Each bracket adds its own deepest content. The bound is meant to be
/// at least the depth the parser reaches; [`depth`] then checks the parsed tree, macros
/// expanded, and the parser itself runs on a stack of [`PARSE_STACK`].
pub fn prescan(source: &str) -> Result<(), String> {
    if source.len() > MAX_EXPRESSION {
        return Err(format!("expression is {} bytes long; the limit is {MAX_EXPRESSION}", source.len()));
    }
    let bytes = source.as_bytes();
    let mut levels = vec![Level::default()];
    let mut at = 0;
    let mut previous = b' ';
    while at < bytes.len() {
        let c = bytes[at];
        match c {
            b'"' | b'\'' => {
                at = skip_string(bytes, at, raw_prefix(bytes, at));
                previous = c;
                continue;
            }
            b'(' | b'[' | b'{' => levels.push(Level::default()),
            b')' | b']' | b'}' if levels.len() > 1 => close(&mut levels),
            b',' => levels.last_mut().map_or((), Level::part),
            b'&' | b'|' if previous == c => {
                if let Some(level) = levels.last_mut() {
                    level.part();
                    level.terms += 1;
                }
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'!' | b'<' | b'>' | b'=' | b'?' | b':' | b'.' => {
                let second_of_pair = c == b'=' && matches!(previous, b'=' | b'!' | b'<' | b'>');
                let in_number = c == b'.' && previous.is_ascii_digit();
                if !second_of_pair
                    && !in_number
                    && let Some(level) = levels.last_mut()
                {
                    level.ops += 1;
                }
            }
            _ => {}
        }
        previous = c;
        at += 1;
    }
    while levels.len() > 1 {
        close(&mut levels);
    }
    if levels[0].bound() > MAX_DEPTH {
        return Err(too_deep());
    }
    Ok(())
}

/// What [`prescan`] knows of one bracket.
#[derive(Debug, Default)]
struct Level {
    /// Operators in the current part (between commas, `&&` and `||`).
    ops: usize,
    /// The most operators in any part so far.
    most: usize,
    /// The bound of the deepest bracket inside.
    inner: usize,
    /// `&&` and `||` seen.
    terms: usize,
}

impl Level {
    /// Starts a new part.
    fn part(&mut self) {
        self.most = self.most.max(self.ops);
        self.ops = 0;
    }

    /// The deepest this bracket's content can nest.
    fn bound(&self) -> usize {
        let balanced = (usize::BITS - self.terms.leading_zeros()) as usize;
        self.ops.max(self.most) + self.inner + balanced + 1
    }
}

/// Closes the innermost bracket: its bound counts for the one around it.
fn close(levels: &mut Vec<Level>) {
    if let Some(done) = levels.pop()
        && let Some(outer) = levels.last_mut()
    {
        outer.inner = outer.inner.max(done.bound());
    }
}

fn too_deep() -> String {
    format!("expression is nested too deeply; the limit is {MAX_DEPTH} levels of operators, calls and brackets")
}

/// Whether the quote at `at` starts a raw string (`r"..."`, `br'...'`): backslashes are literal.
fn raw_prefix(bytes: &[u8], at: usize) -> bool {
    let before = |n: usize| at.checked_sub(n).and_then(|i| bytes.get(i)).copied();
    let word = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    match before(1) {
        Some(b'r' | b'R') => match before(2) {
            Some(b'b' | b'B') => !word(before(3)),
            other => !word(other),
        },
        _ => false,
    }
}

/// The position just after the string literal starting at `at` (the end of `bytes` when it is
/// not closed; the parser reports that).
fn skip_string(bytes: &[u8], at: usize, raw: bool) -> usize {
    let quote = bytes[at];
    let triple = bytes.get(at..at + 3).is_some_and(|s| s.iter().all(|&b| b == quote));
    let mut i = if triple { at + 3 } else { at + 1 };
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if !raw => i += 2,
            b if b == quote => {
                if !triple {
                    return i + 1;
                }
                if bytes.get(i..i + 3).is_some_and(|s| s.iter().all(|&b| b == quote)) {
                    return i + 3;
                }
                i += 1;
            }
            b'\n' if !triple => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The depth of a parsed expression, macros expanded; stops counting past [`MAX_DEPTH`].
pub fn depth(expr: &IdedExpr) -> usize {
    fn walk(expr: &IdedExpr, level: usize) -> usize {
        if level > MAX_DEPTH {
            return level;
        }
        let next = level + 1;
        let deepest = |exprs: &mut dyn Iterator<Item = &IdedExpr>| exprs.map(|e| walk(e, next)).max().unwrap_or(level);
        match &expr.expr {
            Expr::Call(call) => deepest(&mut call.target.iter().map(|t| &**t).chain(&call.args)),
            Expr::Comprehension(c) => {
                deepest(&mut [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result].into_iter())
            }
            Expr::List(list) => deepest(&mut list.elements.iter()),
            Expr::Map(map) => deepest(&mut map.entries.iter().flat_map(|e| entry_exprs(&e.expr))),
            Expr::Struct(s) => deepest(&mut s.entries.iter().flat_map(|e| entry_exprs(&e.expr))),
            Expr::Select(select) => walk(&select.operand, next),
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => level,
        }
    }
    walk(expr, 1)
}

fn entry_exprs(entry: &EntryExpr) -> Vec<&IdedExpr> {
    match entry {
        EntryExpr::StructField(field) => vec![&field.value],
        EntryExpr::MapEntry(e) => vec![&e.key, &e.value],
    }
}

/// An estimate of one evaluation: its cost, and the size of its result when that is a list, map
/// or string (how often a loop over it runs).
#[derive(Debug, Clone, Copy)]
struct Estimate {
    cost: u64,
    size: u64,
}

/// The estimated cost of evaluating `expr` once, saturating at `u64::MAX`.
pub fn estimate(expr: &IdedExpr) -> u64 {
    estimate_of(expr).cost
}

fn estimate_of(expr: &IdedExpr) -> Estimate {
    let sum =
        |exprs: &mut dyn Iterator<Item = &IdedExpr>| exprs.map(|e| estimate_of(e).cost).fold(1u64, u64::saturating_add);
    match &expr.expr {
        Expr::Literal(LiteralValue::String(s)) => Estimate { cost: 1, size: s.inner().len() as u64 },
        Expr::Literal(LiteralValue::Bytes(b)) => Estimate { cost: 1, size: b.len() as u64 },
        Expr::Literal(_) => Estimate { cost: 1, size: 1 },
        Expr::Ident(_) => Estimate { cost: 1, size: ASSUMED_SIZE },
        Expr::Select(select) => {
            Estimate { cost: estimate_of(&select.operand).cost.saturating_add(1), size: ASSUMED_SIZE }
        }
        Expr::List(list) => Estimate { cost: sum(&mut list.elements.iter()), size: list.elements.len() as u64 },
        Expr::Map(map) => Estimate {
            cost: sum(&mut map.entries.iter().flat_map(|e| entry_exprs(&e.expr))),
            size: map.entries.len() as u64,
        },
        Expr::Struct(s) => {
            Estimate { cost: sum(&mut s.entries.iter().flat_map(|e| entry_exprs(&e.expr))), size: ASSUMED_SIZE }
        }
        Expr::Call(call) => {
            let parts: Vec<Estimate> = call.target.iter().map(|t| &**t).chain(&call.args).map(estimate_of).collect();
            let cost = parts.iter().map(|p| p.cost).fold(1u64, u64::saturating_add);
            let first = parts.first().map_or(1, |p| p.size);
            let namespace = matches!(call.target.as_deref().map(|t| &t.expr), Some(Expr::Ident(n)) if n == "lists");
            match (call.func_name.as_str(), call.args.as_slice()) {
                ("range", [n]) if namespace => {
                    let size = match &n.expr {
                        Expr::Literal(LiteralValue::Int(i)) => u64::try_from(i.inner().max(&0).to_owned()).unwrap_or(0),
                        _ => ASSUMED_SIZE,
                    };
                    Estimate { cost: cost.saturating_add(size), size }
                }
                ("distinct", []) => Estimate { cost: cost.saturating_add(first.saturating_mul(first)), size: first },
                ("_+_", _) => {
                    let size = parts.iter().map(|p| p.size).fold(0u64, u64::saturating_add);
                    Estimate { cost: cost.saturating_add(size / BYTES_PER_UNIT), size }
                }
                ("replace", [_, new, ..]) => {
                    let size = first.saturating_mul(estimate_of(new).size.saturating_add(1));
                    Estimate { cost: cost.saturating_add(size / BYTES_PER_UNIT), size }
                }
                _ => Estimate { cost, size: parts.iter().map(|p| p.size).max().unwrap_or(1).max(ASSUMED_SIZE) },
            }
        }
        Expr::Comprehension(c) => {
            let range = estimate_of(&c.iter_range);
            let body = estimate_of(&c.loop_cond).cost.saturating_add(estimate_of(&c.loop_step).cost);
            let cost = range
                .cost
                .saturating_add(estimate_of(&c.accu_init).cost)
                .saturating_add(range.size.saturating_mul(body))
                .saturating_add(estimate_of(&c.result).cost);
            Estimate { cost, size: range.size }
        }
        Expr::Unspecified => Estimate { cost: 1, size: 1 },
    }
}

/// The cost of one pass through a loop body: its nodes, not counting the bodies of the loops
/// inside it (those charge for themselves when they run).
pub fn body_cost(exprs: &[&IdedExpr]) -> u64 {
    fn nodes(expr: &IdedExpr) -> u64 {
        let sum = |exprs: &mut dyn Iterator<Item = &IdedExpr>| exprs.map(nodes).fold(1u64, u64::saturating_add);
        match &expr.expr {
            Expr::Call(call) => sum(&mut call.target.iter().map(|t| &**t).chain(&call.args)),
            Expr::Comprehension(c) => sum(&mut [&c.iter_range, &c.accu_init, &c.result].into_iter()),
            Expr::List(list) => sum(&mut list.elements.iter()),
            Expr::Map(map) => sum(&mut map.entries.iter().flat_map(|e| entry_exprs(&e.expr))),
            Expr::Struct(s) => sum(&mut s.entries.iter().flat_map(|e| entry_exprs(&e.expr))),
            Expr::Select(select) => nodes(&select.operand).saturating_add(1),
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => 1,
        }
    }
    exprs.iter().map(|e| nodes(e)).fold(1u64, u64::saturating_add)
}

/// What is left of the budget and the deadline of the evaluation running on this thread.
#[derive(Debug, Clone, Copy)]
struct Meter {
    left: u64,
    deadline: Instant,
    exceeded: Option<Exceeded>,
}

/// Which limit stopped an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// The cost budget.
    Cost,
    /// The time limit.
    Time,
}

impl Exceeded {
    /// What to tell the user.
    pub fn reason(self) -> String {
        match self {
            Exceeded::Cost => format!("evaluation exceeded the cost limit of {COST_LIMIT}"),
            Exceeded::Time => format!("evaluation exceeded the time limit of {}ms", TIME_LIMIT.as_millis()),
        }
    }
}

thread_local! {
    static METER: Cell<Option<Meter>> = const { Cell::new(None) };
}

/// How much one evaluation may use: cost units and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Cost units.
    pub cost: u64,
    /// Time.
    pub time: Duration,
}

impl Budget {
    /// The whole budget of one evaluation: [`COST_LIMIT`] and [`TIME_LIMIT`].
    pub const FULL: Budget = Budget { cost: COST_LIMIT, time: TIME_LIMIT };

    /// What an evaluation may use in place, on the async runtime, before it has to start over
    /// with the [`FULL`](Budget::FULL) budget off it: well under a millisecond of work. Loops over
    /// a few hundred elements stay within it.
    pub const IN_PLACE: Budget = Budget { cost: 5_000, time: Duration::from_millis(1) };
}

/// Runs `evaluate` on this thread with `cost` units to spend before `deadline`; tells which
/// limit stopped it, if one did.
pub fn metered<T>(cost: u64, deadline: Instant, evaluate: impl FnOnce() -> T) -> (T, Option<Exceeded>) {
    METER.set(Some(Meter { left: cost, deadline, exceeded: None }));
    let result = evaluate();
    let exceeded = METER.take().and_then(|meter| meter.exceeded);
    (result, exceeded)
}

/// Uses `units` of the running evaluation's budget; fails once the budget or the time is spent.
pub fn charge(units: u64) -> Result<(), ExecutionError> {
    let Some(mut meter) = METER.get() else { return Ok(()) };
    let exceeded = if meter.exceeded.is_some() {
        meter.exceeded
    } else if units > meter.left {
        Some(Exceeded::Cost)
    } else if Instant::now() > meter.deadline {
        Some(Exceeded::Time)
    } else {
        None
    };
    meter.left = meter.left.saturating_sub(units);
    meter.exceeded = meter.exceeded.or(exceeded);
    METER.set(Some(meter));
    match exceeded {
        Some(limit) => Err(ExecutionError::function_error("limit", limit.reason())),
        None => Ok(()),
    }
}

/// Charges for producing `bytes` bytes.
pub fn charge_bytes(bytes: usize) -> Result<(), ExecutionError> {
    charge(1 + bytes as u64 / BYTES_PER_UNIT)
}
