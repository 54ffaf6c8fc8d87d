//! The master's task priority queue, with parking: a task whose worker group has no free
//! worker waits in its group's own queue until a worker joins or a slot frees.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use porpoise_core::{Priority, TaskPriorityQueue};
use tokio::sync::Notify;

use crate::runner::RunnerHandle;
use porpoise_runtime::Spawner;

/// A task attempt ready to be dispatched.
#[derive(Debug, Clone)]
pub(crate) struct QueuedTask {
    pub workflow_instance_id: i64,
    pub task_instance_id: i64,
    pub attempt: i32,
    pub epoch: i64,
    pub workflow_name: String,
    pub task_name: String,
    pub task_type: String,
    pub command: String,
    pub params: HashMap<String, String>,
    pub timeout_ms: u64,
    pub worker_group: String,
    /// The OS user the task runs as (empty: the worker's own).
    pub tenant: String,
    pub workflow_priority: Priority,
    pub task_priority: Priority,
    pub queued_at: Instant,
    /// How long the task may wait while its worker group has no live worker.
    pub worker_group_wait: Duration,
    /// The worker that last refused this attempt: chosen again only if no other is free.
    pub avoid: Option<String>,
    pub runner: RunnerHandle,
}

#[derive(Debug, Default)]
struct State {
    ready: TaskPriorityQueue<QueuedTask>,
    parked: HashMap<String, TaskPriorityQueue<QueuedTask>>,
    /// (task instance, attempt) queued or parked: a second push is ignored.
    present: HashSet<(i64, i32)>,
    /// Tasks queued or parked, by their workflow priority's rank.
    depth: [usize; Priority::ALL.len()],
}

impl State {
    /// Takes `task` in unless it is already here.
    fn admit(&mut self, task: &QueuedTask) -> bool {
        if !self.present.insert((task.task_instance_id, task.attempt)) {
            return false;
        }
        self.count(task.workflow_priority, 1);
        true
    }

    /// Lets `task` go (popped for dispatch, or taken out of the waiting).
    fn release(&mut self, task: &QueuedTask) {
        if self.present.remove(&(task.task_instance_id, task.attempt)) {
            self.count(task.workflow_priority, -1);
        }
    }

    fn count(&mut self, priority: Priority, change: isize) {
        let depth = &mut self.depth[priority.rank() as usize];
        *depth = depth.saturating_add_signed(change);
        metrics::gauge!(crate::metrics::QUEUE_DEPTH, "priority" => priority.as_str()).set(*depth as f64);
    }
}

/// The queue shared by runners (push) and the dispatcher (pop).
#[derive(Debug, Clone)]
pub(crate) struct DispatchQueue {
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
    /// Runs the delayed pushes.
    spawner: Spawner,
}

impl DispatchQueue {
    pub fn new(spawner: Spawner) -> Self {
        Self { state: Arc::default(), ready: Arc::default(), spawner }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, task: QueuedTask) {
        let mut st = self.state();
        if !st.admit(&task) {
            return;
        }
        st.ready.push(task.workflow_priority, task.task_priority, 0, task);
        drop(st);
        self.ready.notify_one();
    }

    /// Pushes `task` after `delay` (a rejected dispatch backs off).
    pub fn push_after(&self, task: QueuedTask, delay: Duration) {
        if delay.is_zero() {
            return self.push(task);
        }
        let q = self.clone();
        self.spawner.spawn(async move {
            tokio::time::sleep(delay).await;
            q.push(task);
        });
    }

    /// The most urgent ready task, waiting for one if there is none.
    pub async fn pop(&self) -> QueuedTask {
        loop {
            let notified = self.ready.notified();
            {
                let mut st = self.state();
                if let Some(t) = st.ready.pop() {
                    st.release(&t);
                    return t;
                }
            }
            notified.await;
        }
    }

    /// Parks `task` until its group has a free worker. Returns how many tasks are parked.
    pub fn park(&self, task: QueuedTask) -> usize {
        let mut st = self.state();
        if !st.admit(&task) {
            return st.parked.values().map(TaskPriorityQueue::len).sum();
        }
        let group = task.worker_group.clone();
        st.parked.entry(group).or_default().push(task.workflow_priority, task.task_priority, 0, task);
        st.parked.values().map(TaskPriorityQueue::len).sum()
    }

    /// The worker groups with parked tasks.
    pub fn parked_groups(&self) -> Vec<String> {
        self.state().parked.iter().filter(|(_, q)| !q.is_empty()).map(|(g, _)| g.clone()).collect()
    }

    /// Takes `group`'s parked tasks for which `expired` holds out of the queue (the others
    /// keep their order).
    pub fn take_parked(&self, group: &str, expired: impl Fn(&QueuedTask) -> bool) -> Vec<QueuedTask> {
        let mut st = self.state();
        let Some(queue) = st.parked.get_mut(group) else { return Vec::new() };
        let mut keep = Vec::new();
        let mut taken = Vec::new();
        while let Some(t) = queue.pop() {
            if expired(&t) { taken.push(t) } else { keep.push(t) }
        }
        for t in keep {
            queue.push(t.workflow_priority, t.task_priority, 0, t);
        }
        for t in &taken {
            st.release(t);
        }
        let parked = st.parked.values().map(TaskPriorityQueue::len).sum::<usize>();
        drop(st);
        metrics::gauge!(crate::metrics::TASKS_WAITING_FOR_WORKER).set(parked as f64);
        taken
    }

    /// Moves up to `n` of `group`'s parked tasks (most urgent first) back to the ready queue.
    pub fn unpark(&self, group: &str, n: usize) -> usize {
        let mut st = self.state();
        let mut moved = 0;
        while moved < n {
            let Some(t) = st.parked.get_mut(group).and_then(TaskPriorityQueue::pop) else { break };
            st.ready.push(t.workflow_priority, t.task_priority, 0, t);
            moved += 1;
        }
        let parked = st.parked.values().map(TaskPriorityQueue::len).sum::<usize>();
        drop(st);
        if moved > 0 {
            self.ready.notify_one();
        }
        metrics::gauge!(crate::metrics::TASKS_WAITING_FOR_WORKER).set(parked as f64);
        moved
    }
}
