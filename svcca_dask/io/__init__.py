"""Reading activations: row chunks read inside the tasks that use them."""
