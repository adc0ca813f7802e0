//! The workbench's views: one file each, behind one contract ([`View`]), held in one table in
//! tab order. A new view is its file plus its line in the `views!` list below, which declares
//! its module, its [`Tab`] and its place in the table.

use super::state::{Command, Data, Wanted};
use crossterm::event::KeyEvent;
use ratatui::prelude::*;

/// What a key means, as a view or the app's own keys say it.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Show(Tab),
    /// Put this run in focus (the Run, Samples and Logs views show it).
    Focus(i64),
    /// Put this run in focus and show the Run view.
    OpenRun(i64),
    /// Mark or unmark a run for the Compare view.
    ToggleCompare(i64),
    /// Mark these runs (a seed group) for the Compare view, or unmark them all when they are
    /// all marked.
    ToggleCompareAll(Vec<i64>),
    /// Ask before deleting a run.
    AskDelete(i64),
    Help,
    /// Leave, asking first while this session trains.
    AskQuit,
    /// Close the dialog: confirmed or not.
    Confirm(bool),
    /// Say something on the status line.
    Say(String),
    /// Work beyond the screen.
    Do(Command),
}

/// One view: its own state (selection, filters) and how it answers keys and draws. It reads
/// the shared [`Data`] and changes only itself; what it wants changed it returns as an
/// [`Action`].
pub trait View {
    /// Its name in the tab bar (the number in front comes from its place).
    fn title(&self) -> &'static str;
    /// Its lines in the help dialog.
    fn help(&self) -> &'static str;
    /// A key the app's own keys (tabs, help, quit, moving) left to it.
    fn handle_key(&mut self, _key: KeyEvent, _data: &Data) -> Option<Action> {
        None
    }
    /// ↑↓ / j k / the mouse wheel.
    fn move_selection(&mut self, _delta: i64, _data: &Data) -> Option<Action> {
        None
    }
    /// It became the view shown.
    fn on_show(&mut self, _data: &Data) -> Option<Action> {
        None
    }
    /// While it edits something (a filter being typed) it takes every key, and the status line
    /// says this instead.
    fn editing(&self) -> Option<String> {
        None
    }
    /// Adds what it needs the refresher to read (`shown`: it is the view on screen; the others
    /// ask too, so that their data is there when they are switched to).
    fn wants(&self, _data: &Data, _shown: bool, _wanted: &mut Wanted) {}
    /// Keeps its selection inside lists that changed.
    fn clamp(&mut self, _data: &Data) {}
    fn draw(&self, f: &mut Frame, area: Rect, data: &Data);
}

macro_rules! views {
    ($($tab:ident => $module:ident :: $view:ident,)*) => {
        $(pub mod $module;)*

        /// The views, in tab-bar order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Tab {
            $($tab,)*
        }

        impl Tab {
            pub const ALL: &'static [Tab] = &[$(Tab::$tab,)*];
        }

        /// Every view in tab order: `views()[tab as usize]` is the tab's.
        fn views() -> Vec<Box<dyn View>> {
            vec![$(Box::<$module::$view>::default(),)*]
        }
    };
}

views! {
    Experiments => experiments::ExperimentsView,
    Runs => runs::RunsView,
    Run => run::RunView,
    Compare => compare::CompareView,
    Checkpoints => checkpoints::CheckpointsView,
    Sweeps => sweeps::SweepsView,
    Samples => samples::SamplesView,
    Logs => logs::LogsView,
}

impl Tab {
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn at(index: usize) -> Option<Tab> {
        Tab::ALL.get(index).copied()
    }
}

/// The table of views.
pub struct Views(Vec<Box<dyn View>>);

impl Default for Views {
    fn default() -> Self {
        Views(views())
    }
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|v| v.title()))
            .finish()
    }
}

impl Views {
    pub fn get(&self, tab: Tab) -> &dyn View {
        self.0[tab.index()].as_ref()
    }

    pub fn get_mut(&mut self, tab: Tab) -> &mut dyn View {
        self.0[tab.index()].as_mut()
    }

    /// The tab bar's labels: "1 Experiments", "2 Runs", …
    pub fn labels(&self) -> Vec<String> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{} {}", i + 1, v.title()))
            .collect()
    }

    /// Every view's help lines, in tab order.
    pub fn help(&self) -> Vec<&'static str> {
        self.0.iter().map(|v| v.help()).collect()
    }

    /// What all views need read.
    pub fn wanted(&self, data: &Data, shown: Tab) -> Wanted {
        let mut w = Wanted::default();
        for (i, v) in self.0.iter().enumerate() {
            v.wants(data, i == shown.index(), &mut w);
        }
        w.runs.sort();
        w.runs.dedup();
        w
    }

    /// Keeps every view's selection inside lists that changed.
    pub fn clamp(&mut self, data: &Data) {
        for v in &mut self.0 {
            v.clamp(data);
        }
    }
}
