"""The rmcore Streamlit app: thin pages over the rmcore library (see app/main.py)."""
