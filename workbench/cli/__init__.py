"""The `workbench` command: `parser` builds it, `main` runs a verb and turns its errors
into exit codes, and each group of verbs has its module (`scenarios`: run and demo;
`sessions`: replay and export; `checkpoints`: make-tiny and info; `world`: train-world
and eval-world; `serving`: serve and app). `common` holds what the verbs share: the
exit codes and loading the model. A verb imports what it needs when it runs."""
