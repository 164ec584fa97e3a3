//! The dependency graph of resource instances (petgraph), as `skyform graph` draws it.
//! Ordering lives where it is decided: the evaluator orders declarations (`config`), apply
//! orders its steps (`apply`, with delete-before-create and create-before-destroy edges that
//! this graph does not have). See docs/decisions.md, "One dependency graph".

use crate::model::Address;
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Graph {
    pub graph: DiGraph<Address, ()>,
    index: BTreeMap<Address, NodeIndex>,
}

impl Graph {
    /// Builds the graph from (instance, its dependencies); edges point dependency → dependent.
    pub fn build(items: impl IntoIterator<Item = (Address, Vec<Address>)>) -> Graph {
        let mut g = Graph::default();
        let items: Vec<(Address, Vec<Address>)> = items.into_iter().collect();
        for (a, _) in &items {
            g.node(a);
        }
        for (a, deps) in &items {
            let to = g.node(a);
            for d in deps {
                if let Some(&from) = g.index.get(d) {
                    g.graph.update_edge(from, to, ());
                }
            }
        }
        g
    }

    fn node(&mut self, a: &Address) -> NodeIndex {
        if let Some(i) = self.index.get(a) {
            return *i;
        }
        let i = self.graph.add_node(a.clone());
        self.index.insert(a.clone(), i);
        i
    }

    fn edges(&self) -> Vec<(String, String)> {
        let mut e: Vec<(String, String)> = self
            .graph
            .edge_indices()
            .filter_map(|e| self.graph.edge_endpoints(e))
            .map(|(a, b)| (self.graph[a].to_string(), self.graph[b].to_string()))
            .collect();
        e.sort();
        e
    }

    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph skyform {\n  rankdir = \"LR\";\n");
        for a in self.index.keys() {
            out.push_str(&format!(
                "  {};\n",
                serde_json::to_string(&a.to_string()).unwrap_or_default()
            ));
        }
        for (a, b) in self.edges() {
            out.push_str(&format!(
                "  {} -> {};\n",
                serde_json::to_string(&a).unwrap_or_default(),
                serde_json::to_string(&b).unwrap_or_default()
            ));
        }
        out.push_str("}\n");
        out
    }

    pub fn to_mermaid(&self) -> String {
        let ids: BTreeMap<String, usize> = self
            .index
            .keys()
            .enumerate()
            .map(|(i, a)| (a.to_string(), i))
            .collect();
        let mut out = String::from("graph LR\n");
        for (a, i) in &ids {
            out.push_str(&format!("  n{i}[\"{}\"]\n", a.replace('"', "#quot;")));
        }
        for (a, b) in self.edges() {
            out.push_str(&format!("  n{} --> n{}\n", ids[&a], ids[&b]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    #[test]
    fn draws_edges_from_dependency_to_dependent() {
        let c = Address::new(Kind::Cluster, "dev");
        let a = Address::new(Kind::Job, "a");
        let b = Address::new(Kind::Job, "b");
        let g = Graph::build([
            (b.clone(), vec![a.clone(), c.clone()]),
            (a.clone(), vec![c.clone()]),
            (c.clone(), vec![]),
        ]);
        let dot = g.to_dot();
        assert!(dot.contains("\"cluster.dev\" -> \"job.a\""), "{dot}");
        assert!(dot.contains("\"job.a\" -> \"job.b\""), "{dot}");
        assert!(!dot.contains("\"job.b\" -> "), "{dot}");
        assert_eq!(g.to_mermaid().matches("-->").count(), 3);
    }
}
