//! Every named problem list `kiln tune --preset NAME` knows: Step-3's and sPI-GeM's.

pub use crate::step3::presets::Preset;

pub fn all() -> Vec<Preset> {
    let mut all = crate::step3::presets::all();
    all.extend(crate::spigem::presets());
    all
}

pub fn find(name: &str) -> Option<Preset> {
    all().into_iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn preset_names_are_unique_and_found() {
        let names: Vec<&str> = super::all().iter().map(|p| p.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "{names:?}");
        for n in names {
            assert_eq!(super::find(n).unwrap().name, n);
        }
        assert_eq!(
            super::find("pinn-train").unwrap().family,
            "mlp_jet_backward"
        );
    }
}
