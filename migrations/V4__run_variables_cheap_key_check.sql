-- The same rule as V1's `key ~ '^[A-Za-z0-9_.:-]{1,200}$'`, written so that
-- PostgreSQL does not expand `{1,200}` into a 200-state automaton on every
-- row: evaluating that regex (and the large working memory its executor
-- allocates and frees) cost about 40 µs of PostgreSQL CPU per written
-- variable, more than the rest of a single-row upsert (see BENCHMARKS.md,
-- "vars").
ALTER TABLE run_variables
    DROP CONSTRAINT run_variables_key_check,
    ADD CONSTRAINT run_variables_key_check
        CHECK (char_length(key) BETWEEN 1 AND 200 AND key ~ '^[A-Za-z0-9_.:-]+$');
