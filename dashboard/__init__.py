"""convlens dashboard (Streamlit). Talks to the engine only through `accel`."""
