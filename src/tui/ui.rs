//! Drawing the frame: tab bar, the current view (drawn by its module in `views`), status line
//! and dialogs; a function of the [`App`] alone.

use super::app::{App, Modal};
use super::layout;
use super::widgets::centered;
use ratatui::prelude::*;
use ratatui::widgets::{Block, Clear, Paragraph, Tabs, Wrap};

pub fn draw(f: &mut Frame, app: &App) {
    let [top, body, bottom] = layout::screen(f.area());
    let tabs = Tabs::new(app.views.labels())
        .select(app.tab.index())
        .padding(layout::TAB_PADDING_LEFT, layout::TAB_PADDING_RIGHT)
        .divider(layout::TAB_DIVIDER)
        .highlight_style(Style::new().reversed());
    f.render_widget(tabs, top);
    let view = app.views.get(app.tab);
    view.draw(f, body, &app.data);
    let running = app.data.running.len() + app.data.sweeping.len();
    let status = view.editing().unwrap_or_else(|| {
        let training = if running > 0 {
            format!("[{running} training] ")
        } else {
            String::new()
        };
        format!("{training}{}", app.status)
    });
    f.render_widget(Paragraph::new(status).style(Style::new().dim()), bottom);
    if let Some(m) = &app.modal {
        modal(f, app, m);
    }
}

fn modal(f: &mut Frame, app: &App, m: &Modal) {
    let (title, text) = match m {
        Modal::Help => (
            "help",
            format!(
                "1-{} / Tab   switch view          q        quit
↑↓ / j k    move                 ?        this help
{}
Experiment files in experiments/ are watched live.
{}",
                app.views.labels().len(),
                app.views.help().join("\n"),
                app.images
            ),
        ),
        Modal::ConfirmDelete(id) => (
            "delete",
            format!("Delete run {id}, its metrics and checkpoint files?\n\n  y: delete   n: keep"),
        ),
        Modal::ConfirmQuit => (
            "quit",
            "Runs are training. Quit anyway?\nThey stop after their current step: single runs are\nmarked cancelled (R resumes them), sweep runs go back\nto the queue for any worker.\n\n  y: quit   n: stay".to_string(),
        ),
    };
    // As wide as its longest line where the screen allows; rows as wrapped inside the borders.
    let longest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    let inner = longest.clamp(20, f.area().width.saturating_sub(2).max(20) as usize);
    let rows: usize = text
        .lines()
        .map(|l| l.chars().count().div_ceil(inner).max(1))
        .sum();
    let area = centered(f.area(), inner as u16 + 2, (rows + 2) as u16);
    f.render_widget(Clear, area);
    f.render_widget(
        Paragraph::new(text)
            .block(Block::bordered().title(title))
            .wrap(Wrap { trim: false }),
        area,
    );
}
