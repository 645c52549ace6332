"""What the scheduler and the workers share. Nothing here imports torch."""
