"""POST /notes/ writes a note and sends `process_note` when the transaction commits; with `fail=1`
the transaction rolls back after the send was arranged, and no task is sent."""

import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from notes.models import Note
from notes.tasks import process_note


class Refused(Exception):
    pass


@csrf_exempt
@require_POST
def create_note(request: HttpRequest) -> JsonResponse:
    text = json.loads(request.body)["text"]
    try:
        with transaction.atomic():
            note = Note.objects.create(text=text)
            task_id = process_note.delay_on_commit(note.pk)  # sent after the commit below, not before
            if request.GET.get("fail"):
                raise Refused("the view failed after arranging the send")
    except Refused:
        return JsonResponse({"rolled_back": True, "task_id": task_id}, status=409)
    return JsonResponse({"id": note.pk, "task_id": task_id}, status=201)


@require_GET
def show_note(request: HttpRequest, note_id: int) -> JsonResponse:
    note = Note.objects.get(pk=note_id)
    return JsonResponse({"id": note.pk, "status": note.status, "words": note.words})
