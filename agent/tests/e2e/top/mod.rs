//! `gilscope top` in a real terminal.

mod top_under_tmux;
