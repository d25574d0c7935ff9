"""Where jobs travel on JetStream: one WorkQueue stream, one subject per job type."""

STREAM = "CONTEXTIQ_JOBS"
SUBJECT_PREFIX = "contextiq.jobs"
GENERATE_MEMORIES_SUBJECT = f"{SUBJECT_PREFIX}.memory.generate"
LEARN_PROCEDURAL_SUBJECT = f"{SUBJECT_PREFIX}.procedural.learn"
SUBJECTS = [f"{SUBJECT_PREFIX}.>"]
