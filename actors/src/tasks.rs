//! Tasks owned by whoever spawned them: dropping the owner aborts them, so an actor that stops
//! or fails (ractor skips `post_stop` after a failure) leaves no task running.

use tokio::task::JoinHandle;

#[derive(Default)]
pub struct OwnedTasks(Vec<JoinHandle<()>>);

impl OwnedTasks {
    pub fn push(&mut self, task: JoinHandle<()>) {
        self.0.retain(|t| !t.is_finished());
        self.0.push(task);
    }

    pub fn abort_all(&mut self) {
        for t in self.0.drain(..) {
            t.abort();
        }
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.0.iter().filter(|t| !t.is_finished()).count()
    }
}

impl Drop for OwnedTasks {
    fn drop(&mut self) {
        self.abort_all();
    }
}
