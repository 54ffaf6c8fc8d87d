//! Priorities and the total order of the task priority queue: workflow priority, then task
//! priority, then task-group priority, then first come first served.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A workflow's or a task's priority. `Highest` runs first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Highest,
    High,
    #[default]
    Medium,
    Low,
    Lowest,
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 5] = [Self::Highest, Self::High, Self::Medium, Self::Low, Self::Lowest];

    /// The spelling used in specs, the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Highest => "highest",
            Self::High => "high",
            Self::Medium => "medium",
            Self::Low => "low",
            Self::Lowest => "lowest",
        }
    }

    /// 0 for `Highest` up to 4 for `Lowest`; sorting ascending puts the most urgent first.
    pub fn rank(self) -> i32 {
        self as i32
    }

    /// The inverse of [`Priority::rank`].
    pub fn from_rank(rank: i32) -> Option<Priority> {
        Self::ALL.into_iter().find(|p| p.rank() == rank)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown priority {s:?} (expected highest, high, medium, low or lowest)"))
    }
}

/// Where a task stands in the queue. Smaller keys leave first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueKey {
    pub workflow: Priority,
    pub task: Priority,
    /// Task-group priority: a larger number is more urgent, as in DolphinScheduler.
    pub task_group: i32,
    /// Arrival order, assigned by the queue.
    pub seq: u64,
}

impl Ord for QueueKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.workflow
            .cmp(&other.workflow)
            .then(self.task.cmp(&other.task))
            .then(other.task_group.cmp(&self.task_group))
            .then(self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for QueueKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug)]
struct Entry<T> {
    key: QueueKey,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl<T> Eq for Entry<T> {}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The in-memory task priority queue: pops the smallest [`QueueKey`] first.
#[derive(Debug)]
pub struct TaskPriorityQueue<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    next_seq: u64,
}

impl<T> Default for TaskPriorityQueue<T> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), next_seq: 0 }
    }
}

impl<T> TaskPriorityQueue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `item`; among equal priorities, earlier pushes pop first.
    pub fn push(&mut self, workflow: Priority, task: Priority, task_group: i32, item: T) -> QueueKey {
        let key = QueueKey { workflow, task, task_group, seq: self.next_seq };
        self.next_seq += 1;
        self.heap.push(Reverse(Entry { key, item }));
        key
    }

    /// The most urgent item, if any.
    pub fn pop(&mut self) -> Option<T> {
        self.heap.pop().map(|Reverse(e)| e.item)
    }

    /// The key of the item [`TaskPriorityQueue::pop`] would return.
    pub fn peek_key(&self) -> Option<QueueKey> {
        self.heap.peek().map(|Reverse(e)| e.key)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::Priority::*;
    use super::*;

    #[test]
    fn workflow_then_task_then_group_then_fifo() {
        let mut q = TaskPriorityQueue::new();
        q.push(Medium, Medium, 0, "m-m-0 first");
        q.push(Low, Highest, 100, "low workflow");
        q.push(Medium, Medium, 0, "m-m-0 second");
        q.push(Medium, High, 0, "m-high task");
        q.push(Medium, Medium, 5, "m-m-group5");
        q.push(Highest, Lowest, 0, "highest workflow");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            ["highest workflow", "m-high task", "m-m-group5", "m-m-0 first", "m-m-0 second", "low workflow"]
        );
    }

    #[test]
    fn priority_names_and_ranks() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>(), Ok(p));
            assert_eq!(Priority::from_rank(p.rank()), Some(p));
        }
        assert!("urgent".parse::<Priority>().expect_err("unknown priority").contains("urgent"));
    }
}
