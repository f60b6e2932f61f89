"""The discovery domain: what is asked (catalogue.py), what an answer is (kinds.py) and the
one validator by key (answers.py). No I/O: services, schemas and routes read it."""
