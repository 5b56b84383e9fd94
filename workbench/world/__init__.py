"""The rendered world (render), its training data (data, batches), the world model's
training (losses, train, train_files, model) and its evaluation against the truth (eval, plot)."""
