"""Model providers behind one small interface (`base.Provider`), and the router that picks one."""
