//! Continuous online backup. So far: the container format of backup files
//! (`format`); the backup agent, restore and drills build on it.

pub mod format;
