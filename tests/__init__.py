"""The tests, in folders that mirror the packages they test (tests/scalars/engine/ tests scalars/engine/);
tests/docs/ executes the documentation and the example notebooks."""
