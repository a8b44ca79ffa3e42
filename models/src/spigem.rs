//! sPI-GeM's kernel problems: the physics-informed basis networks (tanh MLPs whose value,
//! gradient and Laplacian feed a PDE residual) at the sizes kiln is measured on, as tuning
//! presets for `mlp_jet` (the jets) and `mlp_jet_backward` (one training step).

use kiln_codegen::families::{mlp_jet, mlp_jet_backward};

use crate::step3::presets::Preset;

fn named<P: serde::Serialize>(
    p: &P,
    d: u32,
    width: u32,
    points: u32,
) -> (String, serde_json::Value) {
    (
        format!("d={d} width {width} N={points}"),
        serde_json::to_value(p).expect("problems serialise"),
    )
}

/// `pinn-jets`: u, grad u and the Laplacian of the three PINN target nets.
pub fn pinn_jets() -> Preset {
    Preset {
        name: "pinn-jets",
        family: "mlp_jet",
        about: "PINN target nets, u + grad u + Laplacian: (d=1, width 64, depth 4, N=2^20), (d=2, 128, 4, 2^18), (d=20, 128, 4, 2^16)",
        problems: mlp_jet::pinn_targets()
            .iter()
            .map(|p| named(p, p.d, p.width, p.points))
            .collect(),
    }
}

/// `pinn-train`: one training step of the Laplacian-residual loss on the same nets.
pub fn pinn_train() -> Preset {
    Preset {
        name: "pinn-train",
        family: "mlp_jet_backward",
        about: "PINN target nets, one training step of the Laplacian-residual loss (forward jets, loss, backward): the nets of pinn-jets",
        problems: mlp_jet_backward::pinn_targets()
            .iter()
            .map(|p| named(p, p.d, p.width, p.points))
            .collect(),
    }
}

pub fn presets() -> Vec<Preset> {
    vec![pinn_jets(), pinn_train()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_codegen::families::mlp_jet::MlpJetProblem;
    use kiln_codegen::families::mlp_jet_backward::MlpJetBackwardProblem;

    #[test]
    fn the_presets_hold_the_three_target_nets() {
        let jets = pinn_jets();
        let p: Vec<MlpJetProblem> = jets
            .problems
            .iter()
            .map(|(_, v)| serde_json::from_value(v.clone()).unwrap())
            .collect();
        assert_eq!(p, mlp_jet::pinn_targets());
        let train = pinn_train();
        let p: Vec<MlpJetBackwardProblem> = train
            .problems
            .iter()
            .map(|(_, v)| serde_json::from_value(v.clone()).unwrap())
            .collect();
        assert_eq!(p, mlp_jet_backward::pinn_targets());
        assert_eq!(train.problems[1].0, "d=2 width 128 N=262144");
    }
}
