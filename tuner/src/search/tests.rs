//! Replaying recorded timings through the real search (no GPU).

use std::collections::HashMap;

use super::*;

/// A recorded tuning session: per config, either a failure or a list of
/// per-run times that `time` cycles through.
struct Replay {
    times: HashMap<u32, Vec<f64>>,
    failures: HashMap<u32, Failure>,
    prepared: Vec<u32>,
    timed: Vec<(u32, usize)>,
    cursor: HashMap<u32, usize>,
}

impl Replay {
    fn new(times: &[(u32, &[f64])], failures: &[(u32, &'static str)]) -> Self {
        Replay {
            times: times.iter().map(|(c, t)| (*c, t.to_vec())).collect(),
            failures: failures
                .iter()
                .map(|(c, o)| {
                    (
                        *c,
                        Failure {
                            outcome: o,
                            reason: format!("recorded {o}"),
                        },
                    )
                })
                .collect(),
            prepared: Vec::new(),
            timed: Vec::new(),
            cursor: HashMap::new(),
        }
    }
}

impl Evaluator<u32> for Replay {
    fn prepare(&mut self, configs: &[u32]) -> Vec<Result<Prepared, Failure>> {
        self.prepared.extend_from_slice(configs);
        configs
            .iter()
            .map(|c| match self.failures.get(c) {
                Some(f) if f.outcome != "launch_failed" => Err(f.clone()),
                _ => Ok(Prepared {
                    max_rel_err: 1e-3,
                    registers: Some(64),
                    ..Default::default()
                }),
            })
            .collect()
    }
    fn time(&mut self, c: &u32, reps: usize) -> Result<Measurement, Failure> {
        self.timed.push((*c, reps));
        if let Some(f) = self.failures.get(c) {
            return Err(f.clone());
        }
        let t = &self.times[c];
        let cur = self.cursor.entry(*c).or_insert(0);
        let samples: Vec<f64> = (0..reps).map(|i| t[(*cur + i) % t.len()]).collect();
        *cur += reps;
        Ok(Measurement::from_samples(samples, true))
    }
}

fn opts() -> SearchOptions {
    SearchOptions {
        exhaustive_max: 8,
        shortlist: 4,
        per_class_min: 0,
        round_reps: vec![3, 9],
        ..Default::default()
    }
}

#[test]
fn exhaustive_picks_the_fastest_and_records_every_failure() {
    let mut ev = Replay::new(
        &[
            (1, &[10.0]),
            (2, &[8.0, 8.2, 7.9]),
            (3, &[9.0]),
            (4, &[1.0]),
        ],
        &[(4, "invalid"), (5, "compile_failed"), (6, "launch_failed")],
    );
    let cands = (1..=6).map(|c| (c, c as f64)).collect();
    let r = search(cands, 1.0, &mut ev, &opts());
    let (w, m, _) = r.winner.unwrap();
    assert_eq!(
        w, 2,
        "a config that failed validation must never win, however fast"
    );
    assert!((m.median_us - 8.0).abs() < 0.3);
    let outcome = |c: u32| {
        r.records
            .iter()
            .find(|x| x.config == serde_json::json!(c))
            .unwrap()
            .outcome
            .clone()
    };
    assert_eq!(outcome(4), "invalid");
    assert_eq!(outcome(5), "compile_failed");
    assert_eq!(outcome(6), "launch_failed");
    assert_eq!(outcome(2), "ok");
    assert_eq!(r.records.len(), 6);
}

#[test]
fn large_spaces_use_the_prior_then_halving() {
    // 20 configs; the prior ranks by id, the truth favours 3.
    let truth: Vec<(u32, Vec<f64>)> = (0..20)
        .map(|c| (c, vec![if c == 3 { 5.0 } else { 10.0 + c as f64 }]))
        .collect();
    let times: Vec<(u32, &[f64])> = truth.iter().map(|(c, t)| (*c, t.as_slice())).collect();
    let mut ev = Replay::new(&times, &[]);
    let cands = (0..20).map(|c| (c, c as f64)).collect();
    let r = search(cands, 1.0, &mut ev, &opts());
    assert_eq!(r.winner.unwrap().0, 3);
    assert_eq!(
        ev.prepared,
        vec![0, 1, 2, 3],
        "only the shortlist is compiled"
    );
    let pruned = r.records.iter().filter(|x| x.outcome == "pruned").count();
    assert_eq!(pruned, 16);
}

#[test]
fn slow_candidates_stop_early() {
    let mut ev = Replay::new(&[(0, &[5.0]), (1, &[50.0]), (2, &[5.5])], &[]);
    let r = search(vec![(0, 0.0), (1, 1.0), (2, 2.0)], 0.1, &mut ev, &opts());
    assert_eq!(r.winner.unwrap().0, 0);
    let rec = r
        .records
        .iter()
        .find(|x| x.config == serde_json::json!(1))
        .unwrap();
    assert_eq!(rec.outcome, "stopped");
    // Config 1 was timed once (round 0) and never again.
    assert_eq!(ev.timed.iter().filter(|(c, _)| *c == 1).count(), 1);
}

#[test]
fn near_ties_break_deterministically_whatever_the_order() {
    for order in [vec![7u32, 3], vec![3, 7]] {
        let mut ev = Replay::new(&[(7, &[10.0, 10.04]), (3, &[10.05, 10.0])], &[]);
        let cands = order.iter().map(|&c| (c, 0.0)).collect();
        let r = search(cands, 1.0, &mut ev, &opts());
        assert_eq!(
            r.winner.unwrap().0,
            3,
            "within the tie tolerance the smaller config wins"
        );
    }
}

#[test]
fn reaching_the_roofline_ends_the_search() {
    let mut ev = Replay::new(&[(0, &[10.2]), (1, &[12.0]), (2, &[11.0])], &[]);
    let r = search(vec![(0, 0.0), (1, 1.0), (2, 2.0)], 10.0, &mut ev, &opts());
    assert_eq!(r.winner.unwrap().0, 0);
    // One round only (3 reps each), plus the re-confirmation of the top two.
    assert!(ev.timed.iter().all(|(_, reps)| *reps == 3 || *reps == 9));
    assert_eq!(ev.timed.iter().filter(|(_, reps)| *reps == 3).count(), 3);
    assert_eq!(ev.timed.iter().filter(|(_, reps)| *reps == 9).count(), 2);
}

#[test]
fn everything_failing_gives_no_winner() {
    let mut ev = Replay::new(&[], &[(0, "compile_failed"), (1, "invalid")]);
    let r = search(vec![(0, 0.0), (1, 1.0)], 1.0, &mut ev, &opts());
    assert!(r.winner.is_none());
    assert_eq!(r.tried, 0);
    assert_eq!(r.records.len(), 2);
}

#[test]
fn the_reconfirmation_can_overturn_a_lucky_first_round() {
    // Config 1 looks fast in round 0 (3 runs) and is slow afterwards.
    let mut ev = Replay::new(
        &[
            (0, &[6.0]),
            (
                1,
                &[
                    4.0, 4.0, 4.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0,
                    9.0, 9.0, 9.0, 9.0, 9.0,
                ],
            ),
        ],
        &[],
    );
    let r = search(vec![(1, 0.0), (0, 1.0)], 1.0, &mut ev, &opts());
    assert_eq!(r.winner.unwrap().0, 0);
}

#[test]
fn every_kernel_class_gets_a_place_on_the_shortlist() {
    #[derive(Clone, serde::Serialize)]
    struct Cfg {
        kernel: &'static str,
        id: u32,
    }
    let ranked: Vec<(Cfg, f64)> = (0..20)
        .map(|i| {
            (
                Cfg {
                    kernel: if i < 16 { "stream" } else { "tiled" },
                    id: i,
                },
                i as f64,
            )
        })
        .collect();
    let o = SearchOptions {
        exhaustive_max: 8,
        shortlist: 6,
        per_class_min: 3,
        ..Default::default()
    };
    let chosen = choose_shortlist(&ranked, &o);
    let picked: Vec<u32> = ranked
        .iter()
        .zip(&chosen)
        .filter(|(_, &k)| k)
        .map(|((c, _), _)| c.id)
        .collect();
    assert_eq!(picked, vec![0, 1, 2, 3, 4, 5, 16, 17, 18]);
}
