//! The task graph of one workflow: tasks are nodes by index, `depends_on` are edges from the
//! upstream task to the downstream one.

use std::collections::{HashMap, VecDeque};

/// A directed graph of tasks. Built by [`crate::WorkflowSpec::dag`] for a validated spec, which
/// has no cycle; [`Dag::new`] accepts any graph so validation can ask [`Dag::find_cycle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dag {
    names: Vec<String>,
    /// The index of each name (the first, if a name repeats: validation refuses that).
    index: HashMap<String, usize>,
    upstream: Vec<Vec<usize>>,
    downstream: Vec<Vec<usize>>,
}

impl Dag {
    /// A graph over `names` with `(upstream, downstream)` edges given as indices into `names`.
    ///
    /// # Panics
    /// If an edge names an index out of range: callers resolve names first.
    pub fn new(names: Vec<String>, edges: &[(usize, usize)]) -> Dag {
        let n = names.len();
        let mut upstream = vec![Vec::new(); n];
        let mut downstream = vec![Vec::new(); n];
        let mut seen = std::collections::HashSet::with_capacity(edges.len());
        for &(from, to) in edges {
            assert!(from < n && to < n, "edge ({from}, {to}) out of range for {n} tasks");
            if seen.insert((from, to)) {
                upstream[to].push(from);
                downstream[from].push(to);
            }
        }
        let mut index = HashMap::with_capacity(n);
        for (i, name) in names.iter().enumerate() {
            index.entry(name.clone()).or_insert(i);
        }
        Dag { names, index, upstream, downstream }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, task: usize) -> &str {
        &self.names[task]
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn upstream(&self, task: usize) -> &[usize] {
        &self.upstream[task]
    }

    pub fn downstream(&self, task: usize) -> &[usize] {
        &self.downstream[task]
    }

    pub fn edge_count(&self) -> usize {
        self.upstream.iter().map(Vec::len).sum()
    }

    /// Tasks with no upstream, in declaration order.
    pub fn roots(&self) -> Vec<usize> {
        (0..self.len()).filter(|&t| self.upstream[t].is_empty()).collect()
    }

    /// Every task after all of its upstream tasks; ties keep declaration order. `None` when
    /// the graph has a cycle.
    pub fn topological_order(&self) -> Option<Vec<usize>> {
        let mut indegree: Vec<usize> = self.upstream.iter().map(Vec::len).collect();
        let mut queue: VecDeque<usize> = (0..self.len()).filter(|&t| indegree[t] == 0).collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(t) = queue.pop_front() {
            order.push(t);
            for &d in &self.downstream[t] {
                indegree[d] -= 1;
                if indegree[d] == 0 {
                    queue.push_back(d);
                }
            }
        }
        (order.len() == self.len()).then_some(order)
    }

    /// One cycle, as the tasks on it in edge order (the first is not repeated at the end).
    pub fn find_cycle(&self) -> Option<Vec<usize>> {
        // 0 = unvisited, 1 = on the current path, 2 = done
        let mut mark = vec![0u8; self.len()];
        let mut path = Vec::new();
        for start in 0..self.len() {
            if mark[start] == 0
                && let Some(cycle) = self.cycle_from(start, &mut mark, &mut path)
            {
                return Some(cycle);
            }
        }
        None
    }

    fn cycle_from(&self, start: usize, mark: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
        // iterative DFS: (node, next child index)
        let mut stack = vec![(start, 0usize)];
        mark[start] = 1;
        path.push(start);
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&child) = self.downstream[node].get(*next) {
                *next += 1;
                match mark[child] {
                    0 => {
                        mark[child] = 1;
                        path.push(child);
                        stack.push((child, 0));
                    }
                    1 => {
                        let at = path.iter().position(|&t| t == child).unwrap_or(0);
                        return Some(path[at..].to_vec());
                    }
                    _ => {}
                }
            } else {
                mark[node] = 2;
                path.pop();
                stack.pop();
            }
        }
        None
    }

    /// Tasks not yet started whose upstream tasks all succeeded, in declaration order.
    /// `succeeded[t]` and `started[t]` describe task `t`.
    pub fn ready(&self, succeeded: &[bool], started: &[bool]) -> Vec<usize> {
        (0..self.len()).filter(|&t| !started[t] && self.upstream[t].iter().all(|&u| succeeded[u])).collect()
    }

    /// Every task reachable downstream of `task`, excluding `task` itself.
    pub fn descendants(&self, task: usize) -> Vec<usize> {
        let mut seen = vec![false; self.len()];
        let mut stack = self.downstream[task].clone();
        let mut out = Vec::new();
        while let Some(t) = stack.pop() {
            if !seen[t] {
                seen[t] = true;
                out.push(t);
                stack.extend(&self.downstream[t]);
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diamond() -> Dag {
        let names = ["a", "b", "c", "d"].map(String::from).to_vec();
        Dag::new(names, &[(0, 1), (0, 2), (1, 3), (2, 3)])
    }

    #[test]
    fn diamond_shape() {
        let dag = diamond();
        assert_eq!(dag.roots(), [0]);
        assert_eq!(dag.edge_count(), 4);
        assert_eq!(dag.topological_order(), Some(vec![0, 1, 2, 3]));
        assert_eq!(dag.find_cycle(), None);
        assert_eq!(dag.descendants(1), [3]);
        assert_eq!(dag.descendants(0), [1, 2, 3]);
    }

    #[test]
    fn ready_waits_for_every_upstream() {
        let dag = diamond();
        let none = [false; 4];
        assert_eq!(dag.ready(&none, &none), [0]);
        let started = [true, false, false, false];
        assert_eq!(dag.ready(&none, &started), Vec::<usize>::new());
        let succeeded = [true, false, false, false];
        assert_eq!(dag.ready(&succeeded, &started), [1, 2]);
        // b done, c still running: d is not ready
        let succeeded = [true, true, false, false];
        let started = [true, true, true, false];
        assert_eq!(dag.ready(&succeeded, &started), Vec::<usize>::new());
        let succeeded = [true, true, true, false];
        assert_eq!(dag.ready(&succeeded, &started), [3]);
    }

    #[test]
    fn finds_the_cycle() {
        let names = ["a", "b", "c", "d"].map(String::from).to_vec();
        // a -> b -> c -> b, d alone
        let dag = Dag::new(names, &[(0, 1), (1, 2), (2, 1)]);
        assert_eq!(dag.topological_order(), None);
        assert_eq!(dag.find_cycle(), Some(vec![1, 2]));
    }
}
