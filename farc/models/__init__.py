"""Model definitions: DeiT (the teacher) and FAR (the BiLSTM student)."""
