//! The tables that listings print (`comfy-table`, without borders): each column as wide as its
//! widest cell, so long names never run into the next column; numbers aligned right.

use comfy_table::{CellAlignment, ColumnConstraint, Table as Grid, presets};

use crate::client::ClientError;
use crate::outln;

/// A table being filled, printed with [`Table::print`].
#[derive(Debug)]
pub struct Table {
    grid: Grid,
}

impl Table {
    /// A table with these column headers. A header ending in `>` (`"VERSION>"`) makes its
    /// column right-aligned; the `>` is not printed.
    pub fn new(headers: &[&str]) -> Self {
        let mut grid = Grid::new();
        grid.load_style(presets::NOTHING);
        grid.set_header(headers.iter().map(|h| h.trim_end_matches('>')));
        for (column, header) in grid.column_iter_mut().zip(headers) {
            // two spaces between columns, none at the edges
            column.set_padding((0, 2));
            column.set_constraint(ColumnConstraint::ContentWidth);
            if header.ends_with('>') {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        Self { grid }
    }

    /// Adds a row: one cell per column.
    pub fn row<I, C>(&mut self, cells: I)
    where
        I: IntoIterator<Item = C>,
        C: ToString,
    {
        self.grid.add_row(cells.into_iter().map(|c| c.to_string()).collect::<Vec<_>>());
    }

    /// The table as lines, without trailing spaces.
    pub fn lines(&self) -> Vec<String> {
        self.grid.lines().map(|l| l.trim_end().to_string()).filter(|l| !l.is_empty()).collect()
    }

    /// Prints the table to standard output.
    pub fn print(&self) -> Result<(), ClientError> {
        for line in self.lines() {
            outln!("{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell_and_numbers_align_right() {
        let mut t = Table::new(&["WORKFLOW", "VERSION>", "STATE"]);
        t.row(["a-workflow-name-much-longer-than-the-old-thirty-two-columns", "1", "success"]);
        t.row(["b", "12", "running"]);
        assert_eq!(
            t.lines(),
            [
                "WORKFLOW                                                     VERSION  STATE",
                "a-workflow-name-much-longer-than-the-old-thirty-two-columns        1  success",
                "b                                                                 12  running",
            ]
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        assert_eq!(Table::new(&["RUN>", "WORKFLOW"]).lines(), ["RUN  WORKFLOW"]);
    }
}
