//! The search over a family's candidates, independent of any GPU: it talks to
//! an [`Evaluator`], which the GPU tuner implements by compiling, validating
//! and timing, and which tests implement by replaying recorded timings.
//!
//! Exhaustive for small spaces; otherwise the family's analytical estimate
//! orders the space and a shortlist goes through successive halving (more
//! timed runs for fewer candidates each round). A candidate slower than
//! `stop_factor` x the leader is dropped early; one within `roofline_margin` of
//! the roofline ends the search. Near-ties (within `tie_tolerance`) are broken
//! deterministically (the smaller config in canonical JSON order), and the
//! winner is re-timed against the runner-up before it is declared.

use std::collections::BTreeMap;

use kiln_runtime::artifact::{CandidateRecord, OutputError};
use kiln_runtime::measure::Measurement;
use serde::Serialize;

/// Why a candidate cannot win.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failure {
    /// `compile_failed`, `launch_failed` or `invalid`.
    pub outcome: &'static str,
    pub reason: String,
}

impl Failure {
    /// A candidate that could not be loaded, given scratch or launched.
    pub fn launch_failed(e: impl std::fmt::Display) -> Failure {
        Failure {
            outcome: "launch_failed",
            reason: e.to_string(),
        }
    }
}

/// What a candidate looked like after preparation.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Prepared {
    pub max_rel_err: f64,
    pub registers: Option<u32>,
    /// Per-output errors, for families that check several outputs (`max_rel_err` is their
    /// worst); empty otherwise.
    pub outputs: Vec<OutputError>,
}

pub trait Evaluator<C> {
    /// Compile, load and validate each config (in parallel where it can).
    fn prepare(&mut self, configs: &[C]) -> Vec<Result<Prepared, Failure>>;
    /// Time one prepared config with `reps` timed runs.
    fn time(&mut self, config: &C, reps: usize) -> Result<Measurement, Failure>;
}

/// A config's key in the search's records and the family benches' maps of prepared kernels:
/// its canonical JSON.
pub fn config_key<C: Serialize>(c: &C) -> String {
    serde_json::to_string(c).expect("configs serialise")
}

/// The prepared state of `config` in a family bench's map (keyed by [`config_key`]), or the
/// failure `time` reports for a config that was never prepared.
pub fn prepared_mut<'m, C: Serialize, K>(
    map: &'m mut std::collections::HashMap<String, K>,
    config: &C,
) -> Result<&'m mut K, Failure> {
    map.get_mut(&config_key(config))
        .ok_or_else(|| Failure::launch_failed("not prepared"))
}

/// How the family benches time a candidate: two warm-up runs, then `reps` timed runs with L2
/// flushed before each; a launch error is the candidate's `launch_failed`.
pub fn time_candidate(
    bench: &mut kiln_runtime::measure::Bench,
    reps: usize,
    launch: impl FnMut() -> kiln_runtime::Result<()>,
) -> Result<Measurement, Failure> {
    let opts = kiln_runtime::measure::MeasureOptions {
        warmup: 2,
        reps,
        flush_l2: true,
    };
    bench.measure(&opts, launch).map_err(Failure::launch_failed)
}

#[derive(Clone, Debug, Serialize)]
pub struct SearchOptions {
    /// Spaces up to this size are measured exhaustively.
    pub exhaustive_max: usize,
    /// Candidates kept from the analytical ranking for larger spaces.
    pub shortlist: usize,
    /// At least this many of each kernel class (a config's `"kernel"` tag)
    /// join the shortlist, so one kernel's optimistic estimates cannot crowd
    /// out another kernel that measures faster.
    pub per_class_min: usize,
    /// Timed runs per round of successive halving.
    pub round_reps: Vec<usize>,
    /// Drop a candidate whose median exceeds this multiple of the leader's.
    pub stop_factor: f64,
    /// Medians within this fraction of each other are a tie.
    pub tie_tolerance: f64,
    /// End the search when a candidate is within this fraction of the roofline.
    pub roofline_margin: f64,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            exhaustive_max: 24,
            shortlist: 32,
            per_class_min: 8,
            round_reps: vec![5, 15, 40],
            stop_factor: 1.5,
            tie_tolerance: 0.01,
            roofline_margin: 0.03,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SearchResult<C> {
    pub winner: Option<(C, Measurement, Prepared)>,
    /// Every candidate's outcome, in the order they were first considered.
    pub records: Vec<CandidateRecord>,
    /// Candidates that were compiled, validated and timed.
    pub tried: usize,
}

/// Search `candidates` (each with its analytical estimate, lower is better).
/// `roofline_us` is the problem's floor time.
pub fn search<C, E>(
    candidates: Vec<(C, f64)>,
    roofline_us: f64,
    ev: &mut E,
    opts: &SearchOptions,
) -> SearchResult<C>
where
    C: Clone + Serialize,
    E: Evaluator<C>,
{
    let key = config_key::<C>;
    let mut ranked = candidates;
    // Stable: equal estimates keep the space's order.
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut records: BTreeMap<String, CandidateRecord> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut record = |c: &C,
                      outcome: &str,
                      reason: Option<String>,
                      records: &mut BTreeMap<String, CandidateRecord>| {
        let k = key(c);
        if !records.contains_key(&k) {
            order.push(k.clone());
        }
        records.insert(
            k,
            CandidateRecord {
                config: serde_json::to_value(c).expect("configs serialise"),
                outcome: outcome.to_string(),
                reason,
                median_us: None,
                max_rel_err: None,
                registers: None,
                outputs: Vec::new(),
            },
        );
    };

    let chosen = choose_shortlist(&ranked, opts);
    for (i, (c, est)) in ranked.iter().enumerate() {
        if !chosen[i] {
            let why = format!("analytical estimate {est:.1} us ranked it out of the shortlist");
            record(c, "pruned", Some(why), &mut records);
        }
    }
    let shortlist: Vec<C> = ranked
        .iter()
        .zip(&chosen)
        .filter(|(_, &k)| k)
        .map(|((c, _), _)| c.clone())
        .collect();

    // Compile + validate.
    let prepared = ev.prepare(&shortlist);
    let mut alive: Vec<(C, Prepared)> = Vec::new();
    for (c, p) in shortlist.iter().zip(prepared) {
        match p {
            Ok(p) => {
                record(c, "ok", None, &mut records);
                let r = records.get_mut(&key(c)).unwrap();
                r.max_rel_err = Some(p.max_rel_err);
                r.registers = p.registers;
                r.outputs = p.outputs.clone();
                alive.push((c.clone(), p));
            }
            Err(f) => record(c, f.outcome, Some(f.reason), &mut records),
        }
    }
    let tried = alive.len();

    // Successive halving.
    let mut timed: Vec<(C, Prepared, Measurement)> = Vec::new();
    let mut reached_roofline = false;
    for (round, &reps) in opts.round_reps.iter().enumerate() {
        timed.clear();
        let mut leader = f64::INFINITY;
        for (c, p) in &alive {
            match ev.time(c, reps) {
                Ok(m) => {
                    let r = records.get_mut(&key(c)).unwrap();
                    r.median_us = Some(m.median_us);
                    if m.median_us > opts.stop_factor * leader {
                        r.outcome = "stopped".into();
                        r.reason = Some(format!(
                            "round {round}: {:.2} us > {} x leader {:.2} us",
                            m.median_us, opts.stop_factor, leader
                        ));
                        continue;
                    }
                    leader = leader.min(m.median_us);
                    timed.push((c.clone(), p.clone(), m));
                }
                Err(f) => {
                    let r = records.get_mut(&key(c)).unwrap();
                    r.outcome = f.outcome.into();
                    r.reason = Some(f.reason);
                }
            }
        }
        sort_with_ties(&mut timed, opts.tie_tolerance, &key);
        if let Some((_, _, m)) = timed.first() {
            if m.median_us <= roofline_us * (1.0 + opts.roofline_margin) {
                reached_roofline = true;
            }
        }
        let last_round = round + 1 == opts.round_reps.len();
        if reached_roofline || last_round || timed.len() <= 1 {
            break;
        }
        let keep = timed.len().div_ceil(2).max(2).min(timed.len());
        for (c, _, m) in &timed[keep..] {
            let r = records.get_mut(&key(c)).unwrap();
            r.outcome = "stopped".into();
            r.reason = Some(format!(
                "round {round}: {:.2} us, not in the faster half",
                m.median_us
            ));
        }
        alive = timed[..keep]
            .iter()
            .map(|(c, p, _)| (c.clone(), p.clone()))
            .collect();
    }

    // Re-confirm the winner against the runner-up with the most reps.
    if timed.len() >= 2 {
        let reps = *opts.round_reps.last().unwrap_or(&20);
        let mut again: Vec<(C, Prepared, Measurement)> = Vec::new();
        for (c, p, m) in timed.iter().take(2) {
            let m2 = ev.time(c, reps).unwrap_or_else(|_| m.clone());
            again.push((c.clone(), p.clone(), m2));
        }
        sort_with_ties(&mut again, opts.tie_tolerance, &key);
        for (c, _, m) in &again {
            records.get_mut(&key(c)).unwrap().median_us = Some(m.median_us);
        }
        let rest: Vec<_> = timed.drain(2..).collect();
        timed = again.into_iter().chain(rest).collect();
    }

    let winner = timed.into_iter().next().map(|(c, p, m)| (c, m, p));
    let records = order
        .into_iter()
        .map(|k| records.remove(&k).unwrap())
        .collect();
    SearchResult {
        winner,
        records,
        tried,
    }
}

/// The kernel class of a config: its serialised `"kernel"` tag, if any.
fn class_of<C: Serialize>(c: &C) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.get("kernel").and_then(|k| k.as_str()).map(str::to_string))
        .unwrap_or_default()
}

/// Which of `ranked` (sorted by estimate) are measured: all of a small space;
/// otherwise the best `shortlist`, topped up to `per_class_min` per class.
fn choose_shortlist<C: Serialize>(ranked: &[(C, f64)], opts: &SearchOptions) -> Vec<bool> {
    if ranked.len() <= opts.exhaustive_max {
        return vec![true; ranked.len()];
    }
    let mut chosen: Vec<bool> = (0..ranked.len()).map(|i| i < opts.shortlist).collect();
    let classes: Vec<String> = ranked.iter().map(|(c, _)| class_of(c)).collect();
    let mut count: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, cls) in classes.iter().enumerate() {
        if chosen[i] {
            *count.entry(cls.as_str()).or_default() += 1;
        }
    }
    for (i, cls) in classes.iter().enumerate() {
        let n = count.entry(cls.as_str()).or_default();
        if !chosen[i] && *n < opts.per_class_min {
            chosen[i] = true;
            *n += 1;
        }
    }
    chosen
}

/// Sort by median; among candidates within `tol` of the fastest, the smallest
/// canonical config comes first (deterministic across runs).
fn sort_with_ties<C, P>(v: &mut [(C, P, Measurement)], tol: f64, key: &impl Fn(&C) -> String) {
    v.sort_by(|a, b| a.2.median_us.total_cmp(&b.2.median_us));
    let Some(best) = v.first().map(|x| x.2.median_us) else {
        return;
    };
    let tied = v
        .iter()
        .take_while(|x| x.2.median_us <= best * (1.0 + tol))
        .count();
    v[..tied].sort_by_key(|x| key(&x.0));
}

#[cfg(test)]
mod tests;
