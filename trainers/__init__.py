"""Models and training for locality vision transformers (LocalViT); knows nothing of Ray or MLflow."""
