from sinagot.models import RecordCollection as BaseRecordCollection


class RecordCollection(BaseRecordCollection):
    task = "HDC"

    def test(self):
        return "Test !!"


# The name older configurations give (`record_collection = 'BehaviorRecordCollection'`).
BehaviorRecordCollection = RecordCollection
