"""The notes app's tasks: found by `app.autodiscover_tasks()`."""

from proj.rabbittask import app

from notes.models import Note


@app.task
def process_note(note_id: int) -> int:
    """Count a note's words. It reads the row the view wrote: sent on commit, the row is there."""
    note = Note.objects.get(pk=note_id)
    note.words = len(note.text.split())
    note.status = "processed"
    note.save(update_fields=["words", "status"])
    return note.words
