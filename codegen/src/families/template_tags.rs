//! Test support: the variable names a template reads, so each family can
//! check that its render vars cover them.

use std::collections::BTreeSet;

/// Names read by `{{ name }}` and `{% if name %}` in `template`; any other tag
/// (loops, filters, expressions) fails the test: templates carry no logic.
pub(crate) fn template_names(template: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = template;
    loop {
        let next = ["{{", "{%"]
            .iter()
            .filter_map(|o| rest.find(o).map(|i| (i, *o)))
            .min();
        let Some((i, open)) = next else { break };
        let close = if open == "{{" { "}}" } else { "%}" };
        let after = &rest[i + open.len()..];
        let j = after.find(close).expect("unclosed tera tag");
        let words: Vec<&str> = after[..j].split_whitespace().collect();
        match words.as_slice() {
            [name] if open == "{{" => {
                names.insert(name.to_string());
            }
            ["if", name] => {
                names.insert(name.to_string());
            }
            ["else"] | ["endif"] => {}
            other => panic!("template tag {other:?} is more than a name or an if"),
        }
        rest = &after[j + close.len()..];
    }
    names
}

/// The parameter names of every definition in `template` that opens with `open` (e.g.
/// `"{{ entry }}("`) and ends at `")\n{"`, in order of appearance: one list per definition, so
/// that a template with several paths checks each path's signature.
pub(crate) fn signatures(template: &str, open: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find(open) {
        let start = i + open.len();
        let end = start
            + rest[start..]
                .find(")\n{")
                .expect("a signature ends in \")\\n{\"");
        out.push(
            rest[start..end]
                .split(',')
                .map(|p| p.split_whitespace().last().unwrap().to_string())
                .collect(),
        );
        rest = &rest[end..];
    }
    out
}
