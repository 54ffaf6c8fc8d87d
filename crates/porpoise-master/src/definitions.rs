//! The master's cache of workflow definitions by id. A stored definition never changes (a new
//! spec is a new version, with a new id), so a definition read once — its spec parsed and its
//! task graph built — serves every later run of it and every listing that names its version,
//! without reading the spec from the database again. The cache holds at most [`MAX_TASKS`]
//! tasks' worth of definitions; the least recently used go first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use porpoise_core::WorkflowSpec;
use porpoise_core::engine::Workflow;
use porpoise_store::{Store, StoreError, WorkflowDefinition};

/// The most tasks, summed over the cached definitions, the cache keeps.
pub(crate) const MAX_TASKS: usize = 100_000;

/// A stored definition, ready for the engine.
#[derive(Debug)]
pub(crate) struct Definition {
    pub version: i32,
    pub workflow: Arc<Workflow>,
}

/// Why a definition cannot be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DefinitionError {
    #[error("workflow definition {0} is gone")]
    Gone(i64),
    #[error("the stored spec of {name} version {version} is unreadable: {problem}")]
    Unreadable { name: String, version: i32, problem: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Default)]
struct Entries {
    by_id: HashMap<i64, (Arc<Definition>, u64)>,
    tasks: usize,
    /// Bumped on each use; an entry's stamp says when it was used last.
    clock: u64,
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Definitions {
    entries: Mutex<Entries>,
    max_tasks: usize,
    /// Held while a definition is read, so that runs started together read it once.
    loading: tokio::sync::Mutex<()>,
}

impl Default for Definitions {
    fn default() -> Self {
        Self::holding(MAX_TASKS)
    }
}

impl Definitions {
    /// A cache of at most `max_tasks` tasks' worth of definitions.
    fn holding(max_tasks: usize) -> Self {
        Self { entries: Mutex::default(), max_tasks, loading: tokio::sync::Mutex::new(()) }
    }

    /// Definition `id`, from the cache or read from `store` (and then kept).
    pub async fn get(&self, store: &dyn Store, id: i64) -> Result<Arc<Definition>, DefinitionError> {
        if let Some(found) = self.cached(id) {
            return Ok(found);
        }
        let _loading = self.loading.lock().await;
        if let Some(found) = self.cached(id) {
            return Ok(found);
        }
        let row = store.definition(id).await?.ok_or(DefinitionError::Gone(id))?;
        let definition = Arc::new(parse(&row)?);
        self.keep(id, definition.clone());
        Ok(definition)
    }

    fn cached(&self, id: i64) -> Option<Arc<Definition>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.clock += 1;
        let now = entries.clock;
        let (definition, used) = entries.by_id.get_mut(&id)?;
        *used = now;
        Some(definition.clone())
    }

    fn keep(&self, id: i64, definition: Arc<Definition>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let size = definition.workflow.spec.tasks.len();
        entries.clock += 1;
        let now = entries.clock;
        if let Some((_, used)) = entries.by_id.get_mut(&id) {
            *used = now; // read twice at once: the first copy stays
            return;
        }
        while entries.tasks + size > self.max_tasks && !entries.by_id.is_empty() {
            let oldest = entries.by_id.iter().min_by_key(|(_, (_, used))| *used).map(|(id, _)| *id);
            if let Some((gone, _)) = oldest.and_then(|id| entries.by_id.remove(&id)) {
                entries.tasks -= gone.workflow.spec.tasks.len();
            }
        }
        entries.tasks += size;
        entries.by_id.insert(id, (definition, now));
    }
}

fn parse(row: &WorkflowDefinition) -> Result<Definition, DefinitionError> {
    let spec: WorkflowSpec = serde_json::from_str(&row.spec_json).map_err(|e| DefinitionError::Unreadable {
        name: row.name.clone(),
        version: row.version,
        problem: e.to_string(),
    })?;
    Ok(Definition { version: row.version, workflow: Arc::new(Workflow::new(spec)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(tasks: usize) -> Arc<Definition> {
        let mut yaml = String::from("name: w\ntasks:\n");
        for i in 0..tasks {
            yaml.push_str(&format!("  - {{ name: t{i}, command: 'true' }}\n"));
        }
        let spec = WorkflowSpec::parse("w.yaml", &yaml).expect("a valid spec");
        Arc::new(Definition { version: 1, workflow: Arc::new(Workflow::new(spec)) })
    }

    #[test]
    fn the_least_recently_used_definitions_leave_once_the_tasks_exceed_the_bound() {
        let cache = Definitions::holding(100);
        let half = 50;
        cache.keep(1, definition(half));
        cache.keep(2, definition(half));
        assert!(cache.cached(1).is_some(), "1 is used again: 2 is now the oldest");
        cache.keep(3, definition(10));
        assert!(cache.cached(1).is_some() && cache.cached(3).is_some());
        assert!(cache.cached(2).is_none(), "the least recently used left");
        let entries = cache.entries.lock().expect("lock");
        assert_eq!(entries.tasks, half + 10);
    }
}
