"""The example rows: the crystals the README shows, sent by every test for which any valid rows
will do."""

ROW = [0.92, 0.12, 0.31, 0.09]
ROWS = [ROW, [0.31, 0.54, 0.78, 0.17], [0.38, 0.04, 0.21, 0.98]]
